//! The `smartscheduler` binary.

mod demo;

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use smartscheduler_api::{telemetry, Application, Cli, Command, TokenArgs};
use smartscheduler_infrastructure::{Claims, JwtTokens};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => {
            telemetry::init("text");
            println!("{}", mint(&args)?);
            Ok(())
        }
        Some(Command::Demo(args)) => {
            telemetry::init("text");
            demo::run(&args)
        }
        Some(Command::Serve(config)) => serve(config),
        None => serve(cli.serve),
    }
}

fn serve(config: smartscheduler_api::ServeConfig) -> anyhow::Result<()> {
    telemetry::init(&config.log_format);
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config).await?;
        app.run_until_stopped().await
    })
}

fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let secret = args.secret.resolve()?;
    let tokens = JwtTokens::hs256(secret.as_bytes()).context("the token secret is not usable")?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        sub: args.sub.clone().unwrap_or_else(|| args.role.to_lowercase()),
        role: args.role.clone(),
        regions: args.regions.clone(),
        contractor_id: args.contractor_id.map(|id| id.to_string()),
        exp: now + args.ttl,
        iat: Some(now),
        iss: args.secret.jwt_issuer.clone(),
        aud: args.secret.jwt_audience.clone(),
    };
    anyhow::ensure!(
        smartscheduler_domain::Role::parse(&claims.role).is_some(),
        "--role must be Admin, Dispatcher or Contractor"
    );
    anyhow::ensure!(
        claims.role != "Contractor" || claims.contractor_id.is_some(),
        "--role Contractor needs --contractor-id"
    );
    Ok(tokens.issue(&claims)?)
}
