//! Named activations for parity tests: each stage is recorded under the reference's module path.

use std::collections::BTreeMap;

/// A sink for named activations. `name` is the reference's module path (`visual.blocks.3`,
/// `language_model.layers.0`, `logits`); `shape` is row-major; `data` is the whole tensor.
pub trait Trace {
    fn record(&mut self, name: &str, shape: &[usize], data: &[f32]);
}

/// Records every stage into a map (name -> (shape, values)).
#[derive(Default, Debug)]
pub struct TraceMap {
    pub stages: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Names in the order they were recorded (the forward's data-flow order).
    pub order: Vec<String>,
}

impl Trace for TraceMap {
    fn record(&mut self, name: &str, shape: &[usize], data: &[f32]) {
        if !self.stages.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.stages
            .insert(name.to_string(), (shape.to_vec(), data.to_vec()));
    }
}

/// How far a long call has got, reported as it goes (after each vision block, after each decoder layer);
/// the caller decides what to show of it (the model knows nothing of terminals).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// `done` of `total` vision blocks run over `patches` patches.
    Vision {
        patches: usize,
        done: usize,
        total: usize,
    },
    /// `done` of `total` decoder layers run over `tokens` rows (a prefill: every token passes each layer
    /// together).
    Decoder {
        tokens: usize,
        done: usize,
        total: usize,
    },
}

/// What a forward pass reports as it runs: an optional trace of every stage, and an optional progress
/// observer (a long vision encode or prefill). `Hooks::default()` reports nothing; the stage names are
/// only formatted when something records.
#[derive(Default)]
pub struct Hooks<'a> {
    pub trace: Option<&'a mut dyn Trace>,
    pub progress: Option<&'a dyn Fn(Progress)>,
}

impl<'a> Hooks<'a> {
    /// Record each stage into `trace`.
    pub fn trace(trace: &'a mut dyn Trace) -> Hooks<'a> {
        Hooks {
            trace: Some(trace),
            progress: None,
        }
    }

    /// Report [`Progress`] to `progress`.
    pub fn progress(progress: &'a dyn Fn(Progress)) -> Hooks<'a> {
        Hooks {
            trace: None,
            progress: Some(progress),
        }
    }

    /// Reports progress to the observer, if any.
    pub(crate) fn report(&self, p: Progress) {
        if let Some(f) = self.progress {
            f(p);
        }
    }

    pub(crate) fn rec(&mut self, name: impl FnOnce() -> String, shape: &[usize], data: &[f32]) {
        if let Some(t) = self.trace.as_mut() {
            t.record(&name(), shape, data);
        }
    }
}
