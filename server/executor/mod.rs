//! Engines and the threads that run them.
//!
//! An [`Engine`] runs one batch synchronously; `instance` gives each engine its own OS thread,
//! so model compute never runs on a tokio worker.

pub mod gpu;
pub mod instance;
pub mod onnx;

use std::time::Duration;

use crate::tensor::{DataType, NamedTensor};

/// An engine failure. `Clone`, so one failed batch can be reported to every request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    /// The engine could not be created (bad file, unsupported model, library missing).
    #[error("{0}")]
    Load(String),
    /// The input could not be handed to the engine (e.g. a BYTES element that is not UTF-8).
    #[error("{0}")]
    InvalidInput(String),
    /// The engine failed while running.
    #[error("{0}")]
    Run(String),
}

/// Name, type and dims of one model input or output, as the engine reports them
/// (dims include the batch dim; -1 for dynamic dims).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineIo {
    pub name: String,
    /// `None` when the engine's type has no Triton equivalent.
    pub dtype: Option<DataType>,
    pub dims: Vec<i64>,
}

/// Time spent in each phase of one execution (Triton's compute_input/infer/output).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimes {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

/// What one execution returns: the requested outputs, in the order asked for.
#[derive(Debug)]
pub struct EngineOutput {
    pub tensors: Vec<NamedTensor>,
    pub times: PhaseTimes,
}

/// A loaded model that runs one batch at a time on the calling thread.
pub trait Engine: Send {
    /// The model's inputs, in the model's order.
    fn inputs(&self) -> &[EngineIo];
    /// The model's outputs, in the model's order.
    fn outputs(&self) -> &[EngineIo];
    /// Runs the model on `inputs` (engine names and shapes) and returns `outputs`, in order.
    fn execute(
        &mut self,
        inputs: &[NamedTensor],
        outputs: &[String],
    ) -> Result<EngineOutput, ExecError>;
}
