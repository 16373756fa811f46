//! The `twinguard` binary: parses the command line, runs the command, maps the outcome to an
//! exit code (SPEC §8). Output functions are the only place that prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use twinguard::config::{json_schema, validate_document, Config, Severity, Validation};
use twinguard::input::{display_name, read_twin};

use cli::{Cli, Command, ConfigCommand};

/// Exit code for a usage error or an unreadable document.
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Config(ConfigCommand::Show { twin }) => config_show(twin.as_deref()),
        Command::Config(ConfigCommand::Schema) => {
            print_json_pretty(&json_schema());
            ExitCode::SUCCESS
        }
        Command::Collect(_) => not_built("collect", "snapshot collectors"),
        Command::Run(_) => not_built("run", "the agent's run loop"),
    }
}

fn not_built(command: &str, what: &str) -> ExitCode {
    eprintln!("twinguard {command}: {what} is not built yet in this version");
    ExitCode::FAILURE
}

/// Reads and validates a twin document, printing every problem. `Err` carries the exit code
/// for an unreadable document.
fn load(path: &Path) -> Result<Validation, ExitCode> {
    let name = display_name(path);
    let doc = read_twin(path).map_err(|e| {
        eprintln!("{name}: error: {e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    Ok(validate_document(&doc))
}

fn print_problems(name: &str, validation: &Validation, to_stderr: bool) {
    for p in &validation.problems {
        let line = format!("{name}: {}: {p}", p.severity.as_str());
        if to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

fn validate(path: &Path) -> ExitCode {
    let validation = match load(path) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let name = display_name(path);
    print_problems(&name, &validation, false);
    let errors = validation.errors().count();
    let warnings = validation
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Warning)
        .count();
    if validation.is_valid() {
        eprintln!("{name}: valid ({warnings} warning(s))");
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "{name}: invalid ({errors} error(s), {warnings} warning(s)); nothing of it would be applied"
        );
        ExitCode::FAILURE
    }
}

fn config_show(twin: Option<&Path>) -> ExitCode {
    let config = match twin {
        None => Config::default(),
        Some(path) => {
            let validation = match load(path) {
                Ok(v) => v,
                Err(code) => return code,
            };
            print_problems(&display_name(path), &validation, true);
            match validation.config {
                Some(c) => c,
                None => return ExitCode::FAILURE,
            }
        }
    };
    print_json_pretty(&config.to_desired_section());
    ExitCode::SUCCESS
}

fn print_json_pretty(value: &serde_json::Value) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("twinguard: error: cannot serialize: {e}"),
    }
}
