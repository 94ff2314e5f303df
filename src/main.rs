use clap::Parser;

fn main() -> std::process::ExitCode {
    // everything this process creates is its user's alone (block files hold file content)
    graviton::private::restrict_umask();
    graviton::volume::hide_passwords_from_the_process_list();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GRAVITON_LOG")
                // a mount daemon's log says when it started and stopped, and its stacks
                .unwrap_or_else(|_| "warn,graviton::daemon=info".into()),
        )
        .with_writer(std::io::stderr)
        // colours only on a terminal: the mount daemon's log file gets plain text
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = graviton::cli::Cli::parse();
    match graviton::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graviton: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
