//! maas-gateway: the binary. Parses the command line and runs the command; the wiring is in
//! the library (`maas_gateway::Application`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use maas_gateway::{Application, Error, Settings, commands};
use slog::{Logger, error};

/// mimalloc instead of glibc's malloc: a proxied call allocates and frees a few hundred small
/// buffers across threads, and glibc's arenas were about a tenth of the gateway's CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The API gateway of a Model-as-a-Service platform.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wait for Postgres, apply pending migrations, then serve (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// GET /health on the configured port; exit 0 when it answers 200 (for container health checks).
    Healthcheck,
    /// Print the effective settings as JSON, passwords redacted.
    Config,
    /// Manage users (for operators without HTTP access).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Manage API keys (for operators without HTTP access).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage the secrets stored at rest.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Encrypt every stored upstream credential under `secrets.encryption_key` (after a key
    /// change, with the old key in `secrets.previous_keys`; and those stored before encryption);
    /// prints how many were rewritten.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create a user and print a first API key for it.
    Create {
        /// Same rules as model names.
        #[arg(long)]
        username: String,
        /// `admin` or `member`.
        #[arg(long, default_value = "member")]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create an API key for a user and print it (shown this once).
    Create {
        /// The user.
        #[arg(long)]
        username: String,
        /// A label for the key.
        #[arg(long, default_value = "cli")]
        name: String,
    },
}

/// Exit status of a configuration error (as BSD's EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Config => to_stderr(commands::print_config(&settings)),
        Command::Healthcheck => to_stderr(commands::healthcheck(&settings)),
        Command::Migrate => {
            let (log, _guard) = maas_telemetry::logging::init_process_logger(&settings.log);
            logged(&log, commands::migrate(&log, &settings).await)
        }
        Command::Serve => {
            let (log, _guard) = maas_telemetry::logging::init_process_logger(&settings.log);
            let served = match Application::build(settings, &log).await {
                Ok(app) => app.run_until_stopped().await,
                Err(e) => Err(e),
            };
            logged(&log, served)
        }
        // Their stdout is the new key alone; logs go to stderr.
        Command::Users {
            command: UsersCommand::Create { username, role },
        } => {
            let (log, _guard) =
                maas_telemetry::logging::init_process_logger_on(&settings.log, std::io::stderr());
            logged(
                &log,
                commands::create_user(&log, &settings, username, &role).await,
            )
        }
        Command::Secrets {
            command: SecretsCommand::Rotate,
        } => {
            let (log, _guard) =
                maas_telemetry::logging::init_process_logger_on(&settings.log, std::io::stderr());
            logged(&log, commands::rotate_secrets(&log, &settings).await)
        }
        Command::Keys {
            command: KeysCommand::Create { username, name },
        } => {
            let (log, _guard) =
                maas_telemetry::logging::init_process_logger_on(&settings.log, std::io::stderr());
            logged(
                &log,
                commands::create_key(&log, &settings, username, &name).await,
            )
        }
    }
}

/// Exit status 0, or 1 with the error logged.
fn logged(log: &Logger, result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(log, "exiting on error"; "error" => e.to_string());
            ExitCode::FAILURE
        }
    }
}

/// Exit status 0, or 1 with the error on stderr (commands without a logger).
fn to_stderr(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
