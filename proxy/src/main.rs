//! The `portcullis` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::config::Config;

/// mimalloc: per-thread free lists without glibc malloc's arena locks; the proxy allocates and
/// frees small buffers on every request from several threads (see the bench section of the
/// README for what it changed).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "An identity-aware access proxy")]
struct Cli {
    /// The configuration file (TOML).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and validate the configuration, then exit.
    Check,
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Session tools.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Write COUNT made-up sessions (random users with a few groups) into the configured store
    /// (the databroker at `databroker_service_url`, or PostgreSQL) and print one sealed session
    /// cookie value per line, for load tests. Refused for the in-memory store.
    Seed {
        /// How many sessions.
        #[arg(long)]
        count: usize,
        /// Write the cookies to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The authority (`host:port`) whose requests the cookies are for (a session cookie
        /// opens only on the host it was issued for); by default the first route's host, with
        /// the listener's port when its `from` names none. Ignored with `cookie_domain`.
        #[arg(long, value_name = "HOST:PORT")]
        host: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Evaluate the policy of the route a URL matches, for a made-up identity and request.
    /// Prints `allow` or `deny` on the first line, then the route and the reasons; exits 0 for
    /// allow, 1 for deny, 2 for usage or configuration errors.
    Test {
        /// The request URL (scheme, host, path).
        #[arg(long)]
        url: String,
        /// The user's email.
        #[arg(long)]
        email: Option<String>,
        /// The user's IdP subject (defaults to the email).
        #[arg(long)]
        user: Option<String>,
        /// The user's groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// A claim, name=value (repeatable); JSON values such as ["a","b"] are taken as such.
        #[arg(long)]
        claim: Vec<String>,
        /// The HTTP method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// The client's IP address.
        #[arg(long)]
        source_ip: Option<std::net::IpAddr>,
        /// The time of the request (RFC 3339); now by default.
        #[arg(long)]
        time: Option<String>,
        /// Evaluate as a request without a session.
        #[arg(long, conflicts_with_all = ["email", "user", "groups", "claim"])]
        anonymous: bool,
    },
}

/// Configuration errors exit with this code.
const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    portcullis::allocator::turn_off_transparent_huge_pages();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => CONFIG_ERROR,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let Some(path) = cli.config else {
        eprintln!("error: --config FILE is required");
        return ExitCode::from(CONFIG_ERROR);
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} configuration error(s)",
                path.display(),
                errors.0.len()
            );
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    match cli.command {
        Some(Command::Check) => {
            println!("{}", config.summary());
            ExitCode::SUCCESS
        }
        Some(Command::Policy {
            command:
                PolicyCommand::Test {
                    url,
                    email,
                    user,
                    groups,
                    claim,
                    method,
                    source_ip,
                    time,
                    anonymous,
                },
        }) => {
            let probe = portcullis::policy_test::Probe {
                url,
                email,
                user,
                groups,
                claims: claim,
                method,
                source_ip,
                time,
                anonymous,
            };
            match portcullis::policy_test::evaluate(config, &probe) {
                Ok(v) => {
                    println!("{}", v.report);
                    if v.allowed {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(CONFIG_ERROR)
                }
            }
        }
        Some(Command::Sessions {
            command: SessionsCommand::Seed { count, out, host },
        }) => {
            let options = portcullis::seed::SeedOptions { count, host };
            let result = match out {
                Some(file) => std::fs::File::create(&file)
                    .map_err(|e| format!("{}: {e}", file.display()))
                    .and_then(|f| {
                        portcullis::seed::seed(&config, &options, &mut std::io::BufWriter::new(f))
                    }),
                None => portcullis::seed::seed(&config, &options, &mut std::io::stdout().lock()),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => match portcullis::server::run(config, &path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
