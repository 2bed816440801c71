//! `grpc.health.v1.Health`: SERVING while the server is ready, as Triton's.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::health_server::Health;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};

/// The health service.
#[derive(Debug, Clone)]
pub struct HealthService {
    core: Arc<Core>,
}

impl HealthService {
    pub fn new(core: Arc<Core>) -> Self {
        HealthService { core }
    }
}

type WatchStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        _: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        // Triton's Check reports readiness (server src/grpc/grpc_server.cc).
        let status = if self.core.ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<WatchStream>, Status> {
        Err(Status::unimplemented(
            "Health/Watch is not implemented by Switchyard",
        ))
    }
}
