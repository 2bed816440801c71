//! `switchyard.Deployment`: Switchyard's own gRPC admin service for deployments. It serves the
//! same state and actions as `GET`/`POST /v2/models/{m}/deployment`, through the same `Core`
//! methods, and is restricted like the repository API.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::restrict::{Category, Restrictions};
use crate::core::Core;
use crate::deploy::control::Event;
use crate::proto::switchyard as pb;
use crate::proto::switchyard::deployment_server::Deployment;

/// The admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    core: Arc<Core>,
    restrictions: Arc<Restrictions>,
}

impl AdminService {
    pub fn new(core: Arc<Core>, restrictions: Restrictions) -> Self {
        AdminService {
            core,
            restrictions: Arc::new(restrictions),
        }
    }

    fn allow<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.restrictions
            .check(Category::ModelRepository, |k| {
                req.metadata().get(k).and_then(|v| v.to_str().ok())
            })
            .map_err(|msg| Status::permission_denied(msg.replace("This API", "This protocol")))
    }
}

fn snake<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn encode_event(e: &Event) -> pb::DeploymentEvent {
    pb::DeploymentEvent {
        time_ms: e.time_ms,
        who: e.who.clone(),
        action: e.action.clone(),
        why: e.why.clone(),
        version: e.version,
        canary_state: e.status.as_ref().map(snake).unwrap_or_default(),
        weight_percent: e.weight_percent,
        gate: e
            .verdict
            .as_ref()
            .map(|v| v.gate.clone())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Deployment for AdminService {
    async fn get_deployment(
        &self,
        req: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::GetDeploymentResponse>, Status> {
        self.allow(&req)?;
        let model = req.into_inner().model;
        let s = self.core.deployment_state(&model)?;
        let state_json = serde_json::to_string(&s)
            .map_err(|e| Status::internal(format!("cannot encode the deployment state: {e}")))?;
        Ok(Response::new(pb::GetDeploymentResponse {
            model: s.model.clone(),
            stable_version: s.stable,
            canary_version: s.canary.as_ref().map(|c| c.version),
            canary_weight_percent: s.canary.as_ref().map_or(0.0, |c| c.weight_percent),
            canary_state: s
                .canary
                .as_ref()
                .map(|c| snake(&c.state))
                .unwrap_or_default(),
            killed: s.killed.clone(),
            history: s.history.iter().map(encode_event).collect(),
            state_json,
        }))
    }

    async fn deployment_action(
        &self,
        req: Request<pb::DeploymentActionRequest>,
    ) -> Result<Response<pb::DeploymentActionResponse>, Status> {
        self.allow(&req)?;
        let r = req.into_inner();
        let event = self.core.deployment_action(
            &r.model,
            &r.action,
            r.version,
            r.weight_percent,
            &r.who,
            &r.why,
        )?;
        Ok(Response::new(pb::DeploymentActionResponse {
            event: Some(encode_event(&event)),
        }))
    }
}
