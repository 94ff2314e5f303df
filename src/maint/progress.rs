//! Progress bars for long-running commands (fsck, gc, dump, load, scrub): drawn on stderr when
//! it is a terminal, silent otherwise, so scripts and logs see only the closing summary.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting `len` items of `what` (for example "blocks").
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), target());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {what} ({{eta}} left)"
        ))
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}

/// A counter for work whose size is not known up front.
pub fn spinner(what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target());
    bar.set_style(
        ProgressStyle::with_template(&format!("{{prefix}} {{spinner}} {{pos}} {what}"))
            .expect("static template"),
    );
    bar
}

fn target() -> ProgressDrawTarget {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}
