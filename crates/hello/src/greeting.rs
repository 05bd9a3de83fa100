//! The greeting, reloadable in place: hello's example of a configuration
//! that changes without a new process (`--greeting-file`, reloaded on
//! SIGUSR1 or by `handover reload --socket …`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use handover::Handover;

/// The longest greeting accepted.
const MAX_LEN: usize = 256;

/// The current greeting, shared by every request; a reload swaps it whole.
#[derive(Clone)]
pub struct Greeting {
    file: Option<PathBuf>,
    text: Arc<RwLock<Arc<str>>>,
}

impl Greeting {
    /// The greeting in `file` (validated), or "hello" without one.
    pub fn load(file: Option<PathBuf>) -> Result<Greeting, String> {
        let text = match &file {
            Some(path) => read(path)?,
            None => Arc::from("hello"),
        };
        Ok(Greeting {
            file,
            text: Arc::new(RwLock::new(text)),
        })
    }

    /// The greeting now.
    pub fn text(&self) -> Arc<str> {
        Arc::clone(&self.text.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Registers the reload: read the file again, keep the old text unless
    /// the new one is valid.
    pub fn reload_on(&self, handover: &Handover) {
        let greeting = self.clone();
        handover.on_reload(move || {
            let Some(path) = &greeting.file else {
                return Err("hello was started without --greeting-file: nothing to reload".into());
            };
            let text = read(path)?;
            let old = std::mem::replace(
                &mut *greeting.text.write().unwrap_or_else(|e| e.into_inner()),
                Arc::clone(&text),
            );
            Ok(format!("greeting {old:?} → {text:?}"))
        });
    }
}

/// One line of text, 1 to [`MAX_LEN`] bytes, from `path`.
fn read(path: &PathBuf) -> Result<Arc<str>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8(raw)
        .map_err(|_| format!("{} is not UTF-8", path.display()))?
        .trim()
        .to_owned();
    if text.is_empty() || text.len() > MAX_LEN || text.contains('\n') {
        return Err(format!(
            "{}: a greeting is one line of 1 to {MAX_LEN} bytes",
            path.display()
        ));
    }
    Ok(Arc::from(text))
}
