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

/// An optional trace and an optional progress observer; the name is only formatted when something
/// records.
pub(crate) struct Tracer<'a>(
    pub Option<&'a mut dyn Trace>,
    pub Option<&'a dyn Fn(Progress)>,
);

impl Tracer<'_> {
    /// Reports progress to the observer, if any.
    pub fn progress(&self, p: Progress) {
        if let Some(f) = self.1 {
            f(p);
        }
    }

    pub fn rec(&mut self, name: impl FnOnce() -> String, shape: &[usize], data: &[f32]) {
        if let Some(t) = self.0.as_mut() {
            t.record(&name(), shape, data);
        }
    }
}
