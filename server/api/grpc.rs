//! `inference.GRPCInferenceService` over the core API. The only place core errors become
//! gRPC status codes.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::convert::{
    decode_infer_request, decode_load_request, encode_infer_response, encode_model_metadata,
    encode_server_metadata, encode_statistics,
};
use super::restrict::{Category, Restrictions};
use crate::core::Core;
use crate::error::InferError;
use crate::proto::inference as pb;
use crate::proto::inference::grpc_inference_service_server::GrpcInferenceService;

impl From<InferError> for Status {
    fn from(e: InferError) -> Status {
        let msg = e.to_string();
        match e {
            InferError::InvalidArgument(_) => Status::invalid_argument(msg),
            InferError::NotFound(_) => Status::not_found(msg),
            InferError::Unavailable(_) => Status::unavailable(msg),
            InferError::Unsupported(_) => Status::unimplemented(msg),
            InferError::Cancelled(_) => Status::cancelled(msg),
            InferError::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            InferError::Exec(crate::executor::ExecError::InvalidInput(_)) => {
                Status::invalid_argument(msg)
            }
            InferError::Exec(_) | InferError::Internal(_) => Status::internal(msg),
        }
    }
}

/// Parses the `grpc-timeout` header ("100m", "5S", ...) into a duration.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn check_repository_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        Ok(())
    } else {
        Err(Status::unimplemented(
            "repository_name must be empty: Switchyard serves one repository",
        ))
    }
}

/// Requests of one `ModelStreamInfer` stream that may be in flight at once (queued, running,
/// or answered but not yet handed to the transport). The stream reads no further request
/// while this many are, so one stream never has more than this many in the server.
pub const STREAM_MAX_IN_FLIGHT: usize = 64;

/// Runs one request of a stream. An error is answered in-band (`error_message`) with the
/// request's id, model name and version, and does not end the stream.
async fn stream_infer(
    core: &Core,
    req: pb::ModelInferRequest,
    headers: &http::HeaderMap,
) -> pb::ModelStreamInferResponse {
    let (id, model_name, model_version) = (
        req.id.clone(),
        req.model_name.clone(),
        req.model_version.clone(),
    );
    let result = match decode_infer_request(req) {
        Ok(mut request) => {
            request.headers = headers.clone();
            core.infer(request, None).await
        }
        Err(e) => Err(e),
    };
    let (error_message, mut response) = match result {
        Ok(response) => (String::new(), encode_infer_response(response)),
        Err(e) => (
            e.to_string(),
            pb::ModelInferResponse {
                id,
                model_name,
                model_version,
                ..Default::default()
            },
        ),
    };
    // Non-decoupled models answer each request with exactly one, final, response.
    response.parameters.insert(
        "triton_final_response".into(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::BoolParam(true)),
        },
    );
    pb::ModelStreamInferResponse {
        error_message,
        infer_response: Some(response),
    }
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by Switchyard yet"))
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcService {
    core: Arc<Core>,
    restrictions: Arc<Restrictions>,
}

impl GrpcService {
    pub fn new(core: Arc<Core>, restrictions: Restrictions) -> Self {
        GrpcService {
            core,
            restrictions: Arc::new(restrictions),
        }
    }

    /// `--grpc-restricted-protocol`: the call's category may need a metadata key/value.
    /// Refused with PERMISSION_DENIED (clients do not retry it, as they would UNAVAILABLE).
    fn allow<T>(&self, category: Category, req: &Request<T>) -> Result<(), Status> {
        self.restrictions
            .check(category, |k| {
                req.metadata().get(k).and_then(|v| v.to_str().ok())
            })
            .map_err(|msg| Status::permission_denied(msg.replace("This API", "This protocol")))
    }
}

type ResponseStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        req: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        self.allow(Category::Health, &req)?;
        Ok(Response::new(pb::ServerLiveResponse {
            live: self.core.live(),
        }))
    }

    async fn server_ready(
        &self,
        req: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        self.allow(Category::Health, &req)?;
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.core.ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        self.allow(Category::Health, &req)?;
        let r = req.into_inner();
        Ok(Response::new(pb::ModelReadyResponse {
            ready: self.core.model_ready(&r.name, &r.version)?,
        }))
    }

    async fn server_metadata(
        &self,
        req: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        self.allow(Category::Metadata, &req)?;
        Ok(Response::new(encode_server_metadata(
            self.core.server_metadata(),
        )))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        self.allow(Category::Metadata, &req)?;
        let r = req.into_inner();
        Ok(Response::new(encode_model_metadata(
            self.core.model_metadata(&r.name, &r.version)?,
        )))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        self.allow(Category::Inference, &req)?;
        let deadline = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .and_then(|d| Instant::now().checked_add(d));
        let (metadata, _, message) = req.into_parts();
        let mut request = decode_infer_request(message)?;
        request.headers = metadata.into_headers();
        let response = self.core.infer(request, deadline).await?;
        Ok(Response::new(encode_infer_response(response)))
    }

    type ModelStreamInferStream = ResponseStream;

    /// Responses in request order; up to [`STREAM_MAX_IN_FLIGHT`] requests run concurrently.
    /// A transport error ends the stream with that status once the requests before it are
    /// answered; the client going away drops (and so cancels) the requests in flight.
    async fn model_stream_infer(
        &self,
        req: Request<tonic::Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        self.allow(Category::Inference, &req)?;
        let core = Arc::clone(&self.core);
        let (metadata, _, stream) = req.into_parts();
        // The stream's metadata applies to every request on it (sticky routing keys).
        let headers = Arc::new(metadata.into_headers());
        let responses = stream
            .map(move |item| {
                let core = Arc::clone(&core);
                let headers = Arc::clone(&headers);
                async move { Ok(stream_infer(&core, item?, &headers).await) }
            })
            .buffered(STREAM_MAX_IN_FLIGHT);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn model_config(
        &self,
        req: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        self.allow(Category::ModelConfig, &req)?;
        let r = req.into_inner();
        let config = self.core.model_config(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some((*config).clone()),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        self.allow(Category::Statistics, &req)?;
        let r = req.into_inner();
        let stats = self.core.statistics(&r.name, &r.version)?;
        Ok(Response::new(pb::ModelStatisticsResponse {
            model_stats: stats.into_iter().map(encode_statistics).collect(),
        }))
    }

    async fn repository_index(
        &self,
        req: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        self.allow(Category::ModelRepository, &req)?;
        let r = req.into_inner();
        check_repository_name(&r.repository_name)?;
        let models = self
            .core
            .index(r.ready)
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state,
                reason: e.reason,
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        self.allow(Category::ModelRepository, &req)?;
        let r = req.into_inner();
        check_repository_name(&r.repository_name)?;
        let request = decode_load_request(r.parameters)?;
        self.core.load_model(&r.model_name, request).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.allow(Category::ModelRepository, &req)?;
        let r = req.into_inner();
        check_repository_name(&r.repository_name)?;
        // `unload_dependents` is accepted; Switchyard has no ensembles to cascade to.
        self.core.unload_model(&r.model_name).await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        req: Request<pb::SystemSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryStatusResponse>, Status> {
        self.allow(Category::SharedMemory, &req)?;
        Err(unimplemented("SystemSharedMemoryStatus"))
    }

    async fn system_shared_memory_register(
        &self,
        req: Request<pb::SystemSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryRegisterResponse>, Status> {
        self.allow(Category::SharedMemory, &req)?;
        Err(unimplemented("SystemSharedMemoryRegister"))
    }

    async fn system_shared_memory_unregister(
        &self,
        req: Request<pb::SystemSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::SystemSharedMemoryUnregisterResponse>, Status> {
        self.allow(Category::SharedMemory, &req)?;
        Err(unimplemented("SystemSharedMemoryUnregister"))
    }

    async fn cuda_shared_memory_status(
        &self,
        req: Request<pb::CudaSharedMemoryStatusRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryStatusResponse>, Status> {
        self.allow(Category::SharedMemory, &req)?;
        Err(unimplemented("CudaSharedMemoryStatus"))
    }

    async fn cuda_shared_memory_register(
        &self,
        req: Request<pb::CudaSharedMemoryRegisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryRegisterResponse>, Status> {
        self.allow(Category::SharedMemory, &req)?;
        Err(unimplemented("CudaSharedMemoryRegister"))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        req: Request<pb::CudaSharedMemoryUnregisterRequest>,
    ) -> Result<Response<pb::CudaSharedMemoryUnregisterResponse>, Status> {
        self.allow(Category::SharedMemory, &req)?;
        Err(unimplemented("CudaSharedMemoryUnregister"))
    }

    async fn trace_setting(
        &self,
        req: Request<pb::TraceSettingRequest>,
    ) -> Result<Response<pb::TraceSettingResponse>, Status> {
        self.allow(Category::Trace, &req)?;
        Err(unimplemented("TraceSetting"))
    }

    async fn log_settings(
        &self,
        req: Request<pb::LogSettingsRequest>,
    ) -> Result<Response<pb::LogSettingsResponse>, Status> {
        self.allow(Category::Logging, &req)?;
        Err(unimplemented("LogSettings"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }

    #[test]
    fn status_mapping() {
        assert_eq!(
            Status::from(InferError::invalid("x")).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Status::from(InferError::NotFound("x".into())).code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            Status::from(InferError::Unavailable("x".into())).code(),
            tonic::Code::Unavailable
        );
    }
}
