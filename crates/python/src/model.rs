//! `qwen3vl._native.Model`: a loaded checkpoint, run through the engine's one request path.
//!
//! Each request runs on its own thread (generate) or on the engine's [`Scheduler`] (generate_batch) while the
//! calling Python thread waits without the GIL, waking every [`POLL`] to run `Python::check_signals`: a
//! Ctrl-C raises KeyboardInterrupt in the caller at once and sets the request's cancel flag, which the
//! engine's text sink sees at the next token (the scheduler's sequence is dropped at its next step).
//! Engine errors become `qwen3vl.EngineError` (a RuntimeError) with the engine's message; a missing model
//! directory is a FileNotFoundError; bad arguments are ValueError / TypeError.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use numpy::{PyArray2, PyArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use qwen3vl_engine::{
    Engine, EngineError, EngineOptions, Event, GenerateParams, Generation, Request, RequestHandle,
    Scheduler, SchedulerOptions,
};
use qwen3vl_kernels::quant::QuantFormat;
use qwen3vl_model::{Precision, VisionInput};
use qwen3vl_processor::{Content, Message};

use crate::image::ImageSrc;

pyo3::create_exception!(
    _native,
    EngineErrorPy,
    pyo3::exceptions::PyRuntimeError,
    "An error reported by the qwen3vl engine (the message is the engine's)."
);

/// How often a waiting call wakes to check for Ctrl-C.
const POLL: Duration = Duration::from_millis(50);
/// KV memory the batch scheduler may reserve (sequences allocate what they need when they start).
const BATCH_KV_BYTES: u64 = 2 << 30;
/// Tokens per request of `generate_batch` when `max_tokens` is not given and the checkpoint sets none.
const BATCH_DEFAULT_MAX_TOKENS: usize = 256;

fn engine_err(e: EngineError) -> PyErr {
    match e {
        EngineError::NoModelDir(_) => PyFileNotFoundError::new_err(e.to_string()),
        e => EngineErrorPy::new_err(e.to_string()),
    }
}

fn interrupted() -> EngineError {
    EngineError::Input("generation interrupted".into())
}

/// One finished answer, as the Python layer receives it.
#[derive(Clone, Debug)]
struct Answer {
    text: String,
    tokens: Vec<u32>,
    finish: &'static str,
    prompt_tokens: usize,
}

impl Answer {
    fn from_generation(g: Generation) -> Answer {
        Answer {
            text: g.text,
            tokens: g.tokens,
            finish: g.finish.as_str(),
            prompt_tokens: g.stats.prefill_tokens,
        }
    }

    /// {"text", "token_ids", "finish_reason", "prompt_tokens", "completion_tokens"}
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("text", &self.text)?;
        d.set_item("token_ids", &self.tokens)?;
        d.set_item("finish_reason", self.finish)?;
        d.set_item("prompt_tokens", self.prompt_tokens)?;
        d.set_item("completion_tokens", self.tokens.len())?;
        Ok(d)
    }
}

/// What a generation thread sends: text pieces (when streaming), then one result.
enum Msg {
    Text(String),
    Done(Result<Answer, EngineError>),
}

/// Waits for the next message without the GIL, checking for Ctrl-C every [`POLL`]. On an interrupt the
/// request's `cancel` flag is set and the KeyboardInterrupt returned.
fn wait<T: Send>(
    py: Python<'_>,
    rx: &mut Option<Receiver<T>>,
    cancel: &AtomicBool,
) -> PyResult<Option<T>> {
    loop {
        let Some(r) = rx.take() else {
            return Ok(None);
        };
        let (got, r) = py.detach(move || (r.recv_timeout(POLL), r));
        match got {
            Ok(m) => {
                *rx = Some(r);
                return Ok(Some(m));
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Err(RecvTimeoutError::Timeout) => {
                *rx = Some(r);
                if let Err(e) = py.check_signals() {
                    cancel.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
    }
}

/// A request as read from Python (GIL held); run later without it.
struct Job {
    messages: Vec<Message>,
    images: Vec<ImageSrc>,
    params: GenerateParams,
}

/// Messages as the Python layer passes them: (role, parts), a part being text or None for an image.
type PyMessages = Vec<(String, Vec<Option<String>>)>;

fn messages_from(parts: PyMessages) -> Vec<Message> {
    parts
        .into_iter()
        .map(|(role, items)| {
            let content = items
                .into_iter()
                .map(|p| p.map(Content::Text).unwrap_or(Content::Image))
                .collect();
            Message::new(&role, content)
        })
        .collect()
}

fn images_from(images: &[Bound<'_, PyAny>]) -> PyResult<Vec<ImageSrc>> {
    images
        .iter()
        .enumerate()
        .map(|(i, o)| ImageSrc::from_py(o, i))
        .collect()
}

/// A loaded checkpoint.
#[pyclass(frozen, module = "qwen3vl._native")]
pub struct Model {
    engine: Arc<Engine>,
    /// Started by the first `generate_batch`.
    scheduler: Mutex<Option<Scheduler>>,
    path: PathBuf,
}

#[pymethods]
impl Model {
    /// Loads a checkpoint directory or a Hugging Face Hub id (`owner/name[@revision]`, downloaded and
    /// cached like the CLI's `--model`).
    #[new]
    #[pyo3(signature = (path, threads = None, precision = "fast", quant = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        threads: Option<usize>,
        precision: &str,
        quant: Option<&str>,
    ) -> PyResult<Model> {
        let precision = match precision {
            "fast" => Precision::Fast,
            "f32" | "exact" => Precision::F32,
            p => {
                return Err(PyValueError::new_err(format!(
                    "precision {p:?}: expected \"fast\" or \"f32\""
                )))
            }
        };
        let quant = quant
            .map(|q| {
                QuantFormat::parse(q).ok_or_else(|| {
                    PyValueError::new_err(format!("quant {q:?}: expected None or \"q8\""))
                })
            })
            .transpose()?;
        if threads == Some(0) {
            return Err(PyValueError::new_err(
                "threads must be at least 1 (or None for all cores)",
            ));
        }
        let engine = py.detach(|| -> Result<(Engine, PathBuf), PyErr> {
            let dir = if path.exists() {
                path.clone()
            } else if path.is_absolute() || path.starts_with(".") || path.components().count() != 2
            {
                // Not a Hub id (owner/name): report the missing directory.
                return Err(engine_err(EngineError::NoModelDir(path.clone())));
            } else {
                qwen3vl_engine::resolve_model(&path, None)
                    .map_err(|e| EngineErrorPy::new_err(e.to_string()))?
            };
            let opts = EngineOptions {
                threads: threads.unwrap_or(0),
                precision,
                quant,
                ..Default::default()
            };
            Ok((Engine::load(&dir, &opts).map_err(engine_err)?, dir))
        })?;
        Ok(Model {
            engine: Arc::new(engine.0),
            scheduler: Mutex::new(None),
            path: engine.1,
        })
    }

    /// The checkpoint directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// The model's context length in tokens.
    #[getter]
    fn context_len(&self) -> usize {
        self.engine.context_len()
    }

    /// Runs one request. messages: [(role, [text or None for an image])]; images: the images in order.
    /// Returns the answer dict, or a TextStream when `stream`.
    #[pyo3(signature = (messages, images, max_tokens, temperature, top_p, top_k, seed, stop, stream))]
    #[allow(clippy::too_many_arguments)]
    fn _run<'py>(
        &self,
        py: Python<'py>,
        messages: PyMessages,
        images: Vec<Bound<'py, PyAny>>,
        max_tokens: Option<usize>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        top_k: Option<usize>,
        seed: Option<u64>,
        stop: Vec<String>,
        stream: bool,
    ) -> PyResult<Py<PyAny>> {
        let job = Job {
            messages: messages_from(messages),
            images: images_from(&images)?,
            params: self.params(max_tokens, temperature, top_p, top_k, seed, stop)?,
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        spawn_run(self.engine.clone(), job, tx, cancel.clone(), stream)?;
        let mut ts = TextStream {
            state: Mutex::new(StreamState {
                rx: Some(rx),
                result: None,
            }),
            cancel,
        };
        if stream {
            return Ok(Py::new(py, ts)?.into_any());
        }
        let a = ts.finish(py)?;
        Ok(a.to_dict(py)?.into_any().unbind())
    }

    /// Runs requests together through the batched decode. requests: [(messages, images)] as in `_run`.
    /// Returns one answer dict per request, in order.
    #[pyo3(signature = (requests, max_tokens, temperature, top_p, top_k, seed, stop))]
    #[allow(clippy::too_many_arguments)]
    fn _run_batch<'py>(
        &self,
        py: Python<'py>,
        requests: Vec<(PyMessages, Vec<Bound<'py, PyAny>>)>,
        max_tokens: Option<usize>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        top_k: Option<usize>,
        seed: Option<u64>,
        stop: Vec<String>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let max_tokens = max_tokens.or(Some(
            self.engine
                .generation_config
                .max_new_tokens
                .unwrap_or(BATCH_DEFAULT_MAX_TOKENS),
        ));
        let params = self.params(max_tokens, temperature, top_p, top_k, seed, stop)?;
        let jobs = requests
            .into_iter()
            .map(|(m, im)| {
                Ok(Job {
                    messages: messages_from(m),
                    images: images_from(&im)?,
                    params: params.clone(),
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let n = jobs.len();
        let sched = self.scheduler()?;
        let cancel = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(usize, Result<Answer, EngineError>)>();
        let c = cancel.clone();
        std::thread::Builder::new()
            .name("qwen3vl-py-batch".into())
            .spawn(move || run_batch(&sched, jobs, &tx, &c))
            .map_err(|e| PyRuntimeError::new_err(format!("starting the batch thread: {e}")))?;
        let mut out: Vec<Option<Answer>> = vec![None; n];
        let mut rx = Some(rx);
        while let Some((i, r)) = wait(py, &mut rx, &cancel)? {
            out[i] = Some(r.map_err(engine_err)?);
        }
        out.into_iter()
            .enumerate()
            .map(|(i, a)| match a {
                Some(a) => a.to_dict(py),
                None => Err(PyRuntimeError::new_err(format!(
                    "request {i} got no answer"
                ))),
            })
            .collect()
    }

    /// The merged vision tokens of one image: float32 (n_tokens, hidden), the rows the decoder receives in
    /// place of the image's `<|image_pad|>` tokens.
    fn image_features<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let src = ImageSrc::from_py(image, 0)?;
        let engine = self.engine.clone();
        let hidden = engine.model.config().text.hidden_size;
        let embeds = py
            .detach(move || -> Result<Vec<f32>, EngineError> {
                let im = src.load(&engine)?;
                let v = engine.model.encode_images(&[VisionInput {
                    pixel_values: im.pixel_values,
                    grid_thw: im.grid_thw,
                }])?;
                Ok(v.embeds)
            })
            .map_err(engine_err)?;
        let rows = embeds.len() / hidden.max(1);
        numpy::PyArray1::from_vec(py, embeds)
            .reshape([rows, hidden])
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }
}

impl Model {
    fn params(
        &self,
        max_tokens: Option<usize>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        top_k: Option<usize>,
        seed: Option<u64>,
        stop: Vec<String>,
    ) -> PyResult<GenerateParams> {
        if max_tokens == Some(0) {
            return Err(PyValueError::new_err("max_tokens must be at least 1"));
        }
        let mut s = self
            .engine
            .generation_config
            .sampling_params(seed.unwrap_or(0));
        if let Some(t) = temperature {
            s.temperature = t;
        }
        if let Some(p) = top_p {
            s.top_p = p;
        }
        if let Some(k) = top_k {
            s.top_k = k;
        }
        s.validate()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(GenerateParams {
            sampling: s,
            max_tokens,
            stop_strings: stop,
            extra_eos: Vec::new(),
        })
    }

    fn scheduler(&self) -> PyResult<Scheduler> {
        let mut s = self.scheduler.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = &*s {
            return Ok(s.clone());
        }
        let kv = SchedulerOptions::kv_tokens_for_bytes(&self.engine, BATCH_KV_BYTES);
        let sched =
            Scheduler::start(self.engine.clone(), SchedulerOptions::new(kv)).map_err(engine_err)?;
        *s = Some(sched.clone());
        Ok(sched)
    }
}

/// Runs `job` on a new thread: images decoded, the prompt prepared and generated; pieces sent when
/// `stream`, then the result. The sink refuses the next piece once `cancel` is set.
fn spawn_run(
    engine: Arc<Engine>,
    job: Job,
    tx: Sender<Msg>,
    cancel: Arc<AtomicBool>,
    stream: bool,
) -> PyResult<()> {
    std::thread::Builder::new()
        .name("qwen3vl-py-generate".into())
        .spawn(move || {
            let r = (|| {
                let pixels = job
                    .images
                    .iter()
                    .map(|i| i.load(&engine))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut sink = |piece: &str| {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(interrupted());
                    }
                    if stream {
                        let _ = tx.send(Msg::Text(piece.to_string()));
                    }
                    Ok(())
                };
                engine.generate(
                    &job.messages,
                    pixels,
                    &job.params,
                    engine.context_len(),
                    &mut sink,
                )
            })();
            let _ = tx.send(Msg::Done(r.map(Answer::from_generation)));
        })
        .map_err(|e| PyRuntimeError::new_err(format!("starting the generation thread: {e}")))?;
    Ok(())
}

/// Submits every job to the scheduler, then collects the answers in order. Stops (dropping, and so
/// cancelling, every handle) when `cancel` is set.
fn run_batch(
    sched: &Scheduler,
    jobs: Vec<Job>,
    tx: &Sender<(usize, Result<Answer, EngineError>)>,
    cancel: &AtomicBool,
) {
    let engine = sched.engine();
    let handles: Vec<Result<RequestHandle, EngineError>> = jobs
        .into_iter()
        .map(|j| {
            let images = j
                .images
                .iter()
                .map(|i| i.load(engine))
                .collect::<Result<Vec<_>, _>>()?;
            sched.submit(Request {
                messages: j.messages,
                images,
                params: j.params,
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.and_then(|h| wait_handle(&h, cancel));
        let failed = r.is_err();
        if tx.send((i, r)).is_err() || failed {
            return;
        }
    }
}

fn wait_handle(h: &RequestHandle, cancel: &AtomicBool) -> Result<Answer, EngineError> {
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(interrupted());
        }
        match h.recv() {
            Some(Event::Text(_) | Event::Token(_)) => {}
            Some(Event::Done {
                tokens,
                text,
                finish,
                stats,
            }) => {
                return Ok(Answer {
                    text,
                    tokens,
                    finish: finish.as_str(),
                    prompt_tokens: stats.prompt_tokens,
                })
            }
            Some(Event::Error(m)) => return Err(EngineError::Input(m)),
            None => {
                return Err(EngineError::Input(
                    "the scheduler stopped before the request finished".into(),
                ))
            }
        }
    }
}

struct StreamState {
    rx: Option<Receiver<Msg>>,
    result: Option<Answer>,
}

/// The text pieces of a streamed answer (an iterator). After the last piece, `result` holds the answer
/// dict. Dropping the stream early stops the generation at its next token.
#[pyclass(module = "qwen3vl._native")]
pub struct TextStream {
    state: Mutex<StreamState>,
    cancel: Arc<AtomicBool>,
}

impl TextStream {
    /// Drains the stream and returns the answer.
    fn finish(&mut self, py: Python<'_>) -> PyResult<Answer> {
        while self.next_piece(py)?.is_some() {}
        self.lock()
            .result
            .clone()
            .ok_or_else(|| PyRuntimeError::new_err("the generation ended without a result"))
    }

    fn next_piece(&self, py: Python<'_>) -> PyResult<Option<String>> {
        // The receiver is taken out while waiting so that the lock is never held without the GIL.
        let mut rx = self.lock().rx.take();
        let r = wait(py, &mut rx, &self.cancel);
        let mut st = self.lock();
        match r? {
            Some(Msg::Text(t)) => {
                st.rx = rx;
                Ok(Some(t))
            }
            Some(Msg::Done(r)) => {
                st.result = Some(r.map_err(engine_err)?);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.next_piece(py)
    }

    /// The answer dict once the stream is exhausted, else None.
    #[getter]
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.lock()
            .result
            .as_ref()
            .map(|a| a.to_dict(py))
            .transpose()
    }

    /// Stops the generation (at its next token).
    fn close(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Drop for TextStream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// The exception class, for the module.
pub(crate) fn engine_error_type(py: Python<'_>) -> Bound<'_, pyo3::types::PyType> {
    py.get_type::<EngineErrorPy>()
}
