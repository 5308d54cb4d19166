//! Entry point of a generated Blitz gateway (from blitzc's templates/main.rs).
//! The gateway itself is in `gateway.rs`; the command line, signals and
//! workers are the runtime's (`blitz_runtime::app`).

mod gateway;

fn main() -> std::process::ExitCode {
    blitz_runtime::app::main(gateway::config(), |_worker| gateway::Generated::new())
}
