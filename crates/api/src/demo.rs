//! `smartscheduler demo`: sample data and tokens to try the console with.
//!
//! Seeds three regions (north, south, east) with three contractors and five
//! unassigned jobs each, through the same use cases the API calls (the
//! [`Catalog`] with an Admin principal), then prints a token per role, the
//! console URL and a curl example.
//!
//! Idempotent: contractors are matched by name within their region and only
//! the missing ones are created; jobs are topped up until the region has five
//! unassigned jobs. A second run after assigning some jobs therefore adds
//! fresh jobs to assign, and nothing else.
//!
//! It opens the database like `serve` does (SQLite in WAL mode with a busy
//! timeout, or PostgreSQL), so it runs fine while `serve` is running on the
//! same file.

use anyhow::Context;
use smartscheduler_api::config::{DemoArgs, SecretArgs};
use smartscheduler_api::TokenArgs;
use smartscheduler_application::{Catalog, CreateContractorRequest, CreateJobRequest};
use smartscheduler_domain::values::Address;
use smartscheduler_domain::{
    Contractor, DurationMinutes, JobStatus, JobType, PersonName, Principal, Region, Role, Skill, Timestamp, Title,
};
use smartscheduler_infrastructure::{database::redact, Database};

/// A sample contractor: name and skills.
type SampleContractor = (&'static str, &'static [&'static str]);

/// Contractors per region.
const CONTRACTORS: [(&str, [SampleContractor; 3]); 3] = [
    (
        "north",
        [
            ("Ana Flores", &["hardwood", "laminate"]),
            ("Ben Okafor", &["tile", "vinyl"]),
            ("Chloe Martin", &["carpet", "hardwood"]),
        ],
    ),
    (
        "south",
        [("Diego Ramos", &["tile", "stone"]), ("Erin Walsh", &["hardwood"]), ("Farah Haddad", &["vinyl", "laminate"])],
    ),
    (
        "east",
        [("Grace Liu", &["carpet"]), ("Hiro Tanaka", &["hardwood", "tile"]), ("Ines Costa", &["laminate", "vinyl"])],
    ),
];

/// Job templates: type, title, minutes, street.
const JOBS: [(&str, &str, i64, &str); 5] = [
    ("Hardwood", "Kitchen oak floor", 120, "12 Birch Lane"),
    ("Tile", "Bathroom tile", 180, "4 Harbour Road"),
    ("Carpet", "Bedroom carpet", 90, "87 Mill Street"),
    ("Vinyl", "Basement vinyl planks", 240, "230 Station Avenue"),
    ("Laminate", "Hallway laminate", 60, "9 Orchard Close"),
];

/// Unassigned jobs each region is topped up to.
const UNASSIGNED_PER_REGION: usize = JOBS.len();
/// Largest page the catalog lists.
const PAGE: u32 = 1000;

/// What a run created and found.
#[derive(Default)]
struct Seeded {
    contractors_created: usize,
    contractors_total: usize,
    jobs_created: usize,
    unassigned_total: usize,
    /// The first north contractor: the one the Contractor token speaks for.
    north_contractor: Option<Contractor>,
}

/// Runs `demo`.
///
/// # Errors
/// The database cannot be opened, a write fails, or the secret is unusable.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let secret = args.secret.resolve()?;
    let url = args.database_url();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let seeded = runtime.block_on(async {
        let db = Database::connect(&url).await?;
        let result = seed(&db).await;
        db.close().await;
        result
    })?;
    let contractor = seeded.north_contractor.as_ref().context("no north contractor was seeded")?;

    let token = |role: &str, regions: &[&str], contractor_id: Option<uuid::Uuid>, sub: &str| {
        crate::mint(&TokenArgs {
            role: role.to_owned(),
            regions: regions.iter().map(|r| (*r).to_owned()).collect(),
            contractor_id,
            sub: Some(sub.to_owned()),
            ttl: args.ttl,
            secret: SecretArgs { jwt_secret: Some(secret.clone()), ..args.secret.clone() },
        })
    };
    let admin = token("Admin", &[], None, "demo-admin")?;
    let dispatcher = token("Dispatcher", &["north"], None, "demo-dispatcher-north")?;
    let contractor_token = token("Contractor", &[], Some(contractor.id().as_uuid()), "demo-contractor")?;

    let base = base_url(&args.bind);
    let hours = args.ttl as f64 / 3600.0;
    println!("Seeded {} ({}):", regions(), redact(&url));
    println!(
        "  contractors: {} ({} new), unassigned jobs: {} ({} new)",
        seeded.contractors_total, seeded.contractors_created, seeded.unassigned_total, seeded.jobs_created
    );
    println!("  (idempotent: a second run creates only what is missing, topping each region up to 5 unassigned jobs)");
    println!();
    if service_listens(&args.bind) {
        println!("Console: {base}/   (the service is running there)");
    } else {
        println!("Console: {base}/   (nothing answers there yet: start the service with `cargo run`)");
    }
    println!();
    println!("Tokens, valid {hours} h; paste one into the console:");
    println!();
    println!("Admin (every region):");
    println!("{admin}");
    println!();
    println!("Dispatcher (region north):");
    println!("{dispatcher}");
    println!();
    println!("Contractor {} (north, contractorId {}):", contractor.name(), contractor.id());
    println!("{contractor_token}");
    println!();
    println!("Try the API:");
    println!("curl -s '{base}/api/jobs?region=north&status=Unassigned' -H 'Authorization: Bearer {dispatcher}'");
    Ok(())
}

/// Creates what is missing; see the module documentation.
async fn seed(db: &Database) -> anyhow::Result<Seeded> {
    let catalog = Catalog::new(db.contractors(), db.jobs(), db.assignment_reads());
    let admin = Principal { subject: "demo".into(), role: Role::Admin, regions: Vec::new(), contractor_id: None };
    let mut seeded = Seeded::default();
    let tomorrow = time::OffsetDateTime::now_utc().date().next_day().context("the calendar ended")?;

    for (region_name, contractors) in CONTRACTORS {
        let region = Region::new(region_name)?;
        let existing = catalog.contractors(&admin, Some(region.clone()), PAGE).await?;
        for (name, skills) in contractors {
            let contractor = match existing.iter().find(|c| c.name().as_str() == name) {
                Some(found) => found.clone(),
                None => {
                    let request = CreateContractorRequest {
                        name: PersonName::new(name)?,
                        region: region.clone(),
                        skills: skills.iter().map(|s| Skill::new(s)).collect::<Result<_, _>>()?,
                    };
                    seeded.contractors_created += 1;
                    catalog.create_contractor(&admin, request).await?
                }
            };
            seeded.contractors_total += 1;
            if region_name == "north" && seeded.north_contractor.is_none() {
                seeded.north_contractor = Some(contractor);
            }
        }

        let unassigned = catalog.jobs(&admin, Some(region.clone()), Some(JobStatus::Unassigned), PAGE).await?;
        let missing = UNASSIGNED_PER_REGION.saturating_sub(unassigned.len());
        // Templates whose title is not already waiting come first.
        let waiting = |title: &str| unassigned.iter().any(|j| j.title().is_some_and(|t| t.as_str() == title));
        let mut templates: Vec<_> = JOBS.iter().filter(|(_, title, _, _)| !waiting(title)).collect();
        templates.extend(JOBS.iter().filter(|(_, title, _, _)| waiting(title)));
        for (day, (job_type, title, minutes, street)) in (0_u8..).zip(templates.into_iter().take(missing)) {
            let start = tomorrow.saturating_add(time::Duration::days(i64::from(day))).with_hms(9, 0, 0)?.assume_utc();
            let request = CreateJobRequest {
                job_type: JobType::new(job_type)?,
                region: region.clone(),
                duration_minutes: DurationMinutes::new(*minutes)?,
                title: Some(Title::new(title)?),
                desired_start_utc: Some(Timestamp::from_datetime(start)),
                address: Some(Address::new(&format!("{street}, {region_name}"))?),
            };
            catalog.create_job(&admin, request).await?;
            seeded.jobs_created += 1;
        }
        seeded.unassigned_total += unassigned.len() + missing;
    }
    Ok(seeded)
}

fn regions() -> String {
    CONTRACTORS.iter().map(|(r, _)| *r).collect::<Vec<_>>().join(", ")
}

/// `http://HOST:PORT` for the bind address; a wildcard host becomes loopback.
/// Whether something accepts connections at the bind address, so that the
/// hint to start the service is given only when it is needed.
fn service_listens(bind: &str) -> bool {
    let host = base_url(bind).trim_start_matches("http://").to_owned();
    std::net::ToSocketAddrs::to_socket_addrs(&host.as_str()).ok().and_then(|mut a| a.next()).is_some_and(|address| {
        std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_millis(300)).is_ok()
    })
}

fn base_url(bind: &str) -> String {
    let (host, port) = bind.rsplit_once(':').unwrap_or((bind, "8080"));
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        other => other,
    };
    format!("http://{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::base_url;

    #[test]
    fn the_console_url_follows_the_bind_address() {
        assert_eq!(base_url("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(base_url("0.0.0.0:9000"), "http://127.0.0.1:9000");
        assert_eq!(base_url("[::]:8080"), "http://[::1]:8080");
    }
}
