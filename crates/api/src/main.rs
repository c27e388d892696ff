//! The `smartscheduler` binary.

mod demo;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use smartscheduler_api::{telemetry, Application, Cli, Command, TokenArgs};
use smartscheduler_infrastructure::{Claims, JwtTokens};

fn main() -> anyhow::Result<()> {
    // `serve`'s settings are accepted without the sub-command too, but the
    // top-level help lists the sub-commands only: `serve --help` has them.
    let command = Cli::command().mut_args(|arg| if is_builtin(&arg) { arg } else { arg.hide(true) });
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|err| err.exit());
    match cli.command {
        Some(Command::Token(args)) => {
            let _logs = telemetry::init("text", None)?;
            println!("{}", mint(&args)?);
            Ok(())
        }
        Some(Command::Demo(args)) => {
            let _logs = telemetry::init("text", None)?;
            demo::run(&args)
        }
        Some(Command::Serve(config)) => serve(*config),
        None => serve(cli.serve),
    }
}

fn serve(config: smartscheduler_api::ServeConfig) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&config.log_format, Some(&config.traces))?;
    let served = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config).await?;
        app.run_until_stopped().await
    });
    // After the runtime: the spans of the last requests and deliveries are flushed.
    telemetry.shutdown();
    served
}

fn is_builtin(arg: &clap::Arg) -> bool {
    matches!(arg.get_id().as_str(), "help" | "version")
}

fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    // Any case is accepted; the claim carries the contract's spelling.
    let role = ["Admin", "Dispatcher", "Contractor"]
        .into_iter()
        .find(|role| role.eq_ignore_ascii_case(args.role.trim()))
        .context("--role must be Admin, Dispatcher or Contractor")?;
    anyhow::ensure!(
        role != "Dispatcher" || !args.regions.is_empty(),
        "--role Dispatcher needs at least one --region (the regions it dispatches)"
    );
    let secret = args.secret.resolve()?;
    let tokens = JwtTokens::hs256(secret.as_bytes()).context("the token secret is not usable")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        sub: args.sub.clone().unwrap_or_else(|| role.to_lowercase()),
        role: role.to_owned(),
        regions: args.regions.clone(),
        contractor_id: args.contractor_id.map(|id| id.to_string()),
        exp: now + args.ttl,
        iat: Some(now),
        iss: args.secret.jwt_issuer.clone(),
        aud: args.secret.jwt_audience.clone(),
    };
    anyhow::ensure!(
        claims.role != "Contractor" || claims.contractor_id.is_some(),
        "--role Contractor needs --contractor-id"
    );
    Ok(tokens.issue(&claims)?)
}
