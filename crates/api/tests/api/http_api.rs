//! Black-box tests of the HTTP API against the external contract
//! (`docs/contract.md`): a fresh service and in-memory database per test,
//! spoken to over real HTTP.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::support::{
    claims, expect_json, expect_problem, id_of, is_utc_z, is_uuid, keys, spawn_app, TestApp, END, START,
};
use reqwest::header::{CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Barrier;
use uuid::Uuid;

/// Sends an assign request that must be refused with `status`, and checks
/// that it wrote nothing to the EventLog.
async fn assert_assign_refused(
    app: &TestApp,
    token: Option<&str>,
    job_id: &str,
    body: &Value,
    status: StatusCode,
) -> Value {
    let before = app.event_rows().await;
    let response = app.assign(token, job_id, body).await;
    let problem = expect_problem(response, status).await;
    let after = app.event_rows().await;
    assert_eq!(after.len(), before.len(), "a refused assignment ({status}) added an EventLog row: {after:#?}");
    problem
}

fn assign_body(contractor_id: &str) -> Value {
    json!({ "contractorId": contractor_id, "startUtc": START, "endUtc": END })
}

// ===========================================================================
// Contractors
// ===========================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_contractor_returns_201_with_a_location_header_and_the_contractor() {
    let app = spawn_app().await;
    let response = app
        .post_contractor(
            Some(&app.admin()),
            &json!({ "name": "Ana Flores", "region": "north", "skills": ["Tile", "Flooring"] }),
        )
        .await;
    let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = expect_json(response, StatusCode::CREATED).await;

    assert_eq!(keys(&body), ["createdAtUtc", "id", "name", "region", "skills"]);
    assert!(is_uuid(&body["id"]), "{body:#}");
    assert_eq!(body["name"], "Ana Flores");
    assert_eq!(body["region"], "north");
    assert_eq!(body["skills"], json!(["Tile", "Flooring"]));
    assert!(is_utc_z(&body["createdAtUtc"]), "{body:#}");
    let id = id_of(&body, "id");
    assert_eq!(location.as_deref(), Some(format!("/api/contractors/{id}").as_str()));

    // The Location can be followed.
    let fetched = app.request(Method::GET, &location.unwrap(), Some(&app.admin())).send().await.unwrap();
    assert_eq!(expect_json(fetched, StatusCode::OK).await, body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_may_create_a_contractor_and_skills_default_to_an_empty_list() {
    let app = spawn_app().await;
    let response = app
        .post_contractor(Some(&app.dispatcher(&["north"])), &json!({ "name": "  Bo  ", "region": "east-2.b_c" }))
        .await;
    let body = expect_json(response, StatusCode::CREATED).await;
    assert_eq!(body["skills"], json!([]));
    assert_eq!(body["name"], "Bo", "names are trimmed");
    assert_eq!(body["region"], "east-2.b_c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getting_a_contractor_by_id_returns_200_with_the_contractor() {
    let app = spawn_app().await;
    let created = app.create_contractor("north").await;
    let response = app.get_contractor(Some(&app.dispatcher(&["south"])), &id_of(&created, "id")).await;
    assert_eq!(expect_json(response, StatusCode::OK).await, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getting_an_unknown_contractor_is_a_404_problem() {
    let app = spawn_app().await;
    app.create_contractor("north").await;
    let response = app.get_contractor(Some(&app.admin()), &Uuid::new_v4().to_string()).await;
    expect_problem(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getting_a_contractor_by_an_id_that_is_not_a_uuid_is_a_404_problem() {
    let app = spawn_app().await;
    let response = app.get_contractor(Some(&app.admin()), "not-a-uuid").await;
    expect_problem(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_contractors_returns_all_of_them_or_only_those_of_one_region() {
    let app = spawn_app().await;
    let n1 = app.contractor_id("north").await;
    let n2 = app.contractor_id("north").await;
    let s1 = app.contractor_id("south").await;
    let token = app.admin();

    let all = expect_json(app.list_contractors(Some(&token), "").await, StatusCode::OK).await;
    let all: HashSet<String> = all.as_array().expect("a JSON array").iter().map(|c| id_of(c, "id")).collect();
    assert_eq!(all, HashSet::from([n1.clone(), n2.clone(), s1.clone()]));

    let north = expect_json(app.list_contractors(Some(&token), "region=north").await, StatusCode::OK).await;
    let north = north.as_array().expect("a JSON array");
    assert!(north.iter().all(|c| c["region"] == "north"), "{north:#?}");
    let north: HashSet<String> = north.iter().map(|c| id_of(c, "id")).collect();
    assert_eq!(north, HashSet::from([n1, n2]));

    let west = expect_json(app.list_contractors(Some(&token), "region=west").await, StatusCode::OK).await;
    assert_eq!(west, json!([]));

    let one = expect_json(app.list_contractors(Some(&token), "limit=1").await, StatusCode::OK).await;
    assert_eq!(one.as_array().map(Vec::len), Some(1), "limit=1 gives one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_contractor_without_a_name_is_a_400_problem() {
    let app = spawn_app().await;
    let response = app.post_contractor(Some(&app.admin()), &json!({ "region": "north" })).await;
    expect_problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_contractor_with_an_empty_or_blank_name_is_a_400_problem() {
    let app = spawn_app().await;
    for name in ["", "   "] {
        let response = app.post_contractor(Some(&app.admin()), &json!({ "name": name, "region": "north" })).await;
        let problem = expect_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains("name"), "the detail names the field: {problem:#}");
    }
    let list = expect_json(app.list_contractors(Some(&app.admin()), "").await, StatusCode::OK).await;
    assert_eq!(list, json!([]), "nothing was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_contractor_with_a_bad_region_is_a_400_problem() {
    let app = spawn_app().await;
    for region in ["a/b", "", "north ", &"x".repeat(65)] {
        let response = app.post_contractor(Some(&app.admin()), &json!({ "name": "Ana", "region": region })).await;
        let problem = expect_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains("region"), "region {region:?}: {problem:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_contractor_with_an_unknown_field_is_a_400_problem() {
    let app = spawn_app().await;
    let response =
        app.post_contractor(Some(&app.admin()), &json!({ "name": "Ana", "region": "north", "rating": 5 })).await;
    expect_problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_contractor_with_malformed_json_is_a_400_problem() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "/api/contractors", Some(&app.admin()))
        .header(CONTENT_TYPE, "application/json")
        .body("{\"name\": \"Ana\", ")
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_contractors_with_a_bad_region_is_a_400_problem() {
    let app = spawn_app().await;
    let response = app.list_contractors(Some(&app.admin()), "region=a%2Fb").await;
    expect_problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contractor_endpoints_without_a_token_are_401_problems_with_a_bearer_challenge() {
    let app = spawn_app().await;
    let id = app.contractor_id("north").await;
    let responses = [
        app.post_contractor(None, &json!({ "name": "Ana", "region": "north" })).await,
        app.get_contractor(None, &id).await,
        app.list_contractors(None, "region=north").await,
    ];
    for response in responses {
        let challenge = response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        expect_problem(response, StatusCode::UNAUTHORIZED).await;
        assert_eq!(challenge.as_deref(), Some("Bearer"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_token_is_a_401_problem() {
    let app = spawn_app().await;
    for token in ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30."] {
        let response = app.post_contractor(Some(token), &json!({ "name": "Ana", "region": "north" })).await;
        expect_problem(response, StatusCode::UNAUTHORIZED).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_a_401_problem() {
    let app = spawn_app().await;
    let response = app.post_contractor(Some(&app.expired_admin()), &json!({ "name": "Ana", "region": "north" })).await;
    expect_problem(response, StatusCode::UNAUTHORIZED).await;
    let response = app.list_contractors(Some(&app.expired_admin()), "").await;
    expect_problem(response, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_another_secret_is_a_401_problem() {
    let app = spawn_app().await;
    let response = app.post_contractor(Some(&app.foreign_admin()), &json!({ "name": "Ana", "region": "north" })).await;
    expect_problem(response, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_an_unknown_role_or_a_non_bearer_scheme_is_a_401_problem() {
    let app = spawn_app().await;
    let superuser = app.token(&claims("Superuser", &[], None));
    let response = app.list_contractors(Some(&superuser), "").await;
    expect_problem(response, StatusCode::UNAUTHORIZED).await;

    let contractor_without_id = app.token(&claims("Contractor", &[], None));
    let response = app.list_contractors(Some(&contractor_without_id), "").await;
    expect_problem(response, StatusCode::UNAUTHORIZED).await;

    let response = app
        .request(Method::GET, "/api/contractors", None)
        .header("Authorization", format!("Basic {}", app.admin()))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_token_is_a_403_problem_on_every_contractor_endpoint() {
    let app = spawn_app().await;
    let id = app.contractor_id("north").await;
    let token = app.contractor(Uuid::parse_str(&id).unwrap());
    let responses = [
        app.post_contractor(Some(&token), &json!({ "name": "Ana", "region": "north" })).await,
        app.get_contractor(Some(&token), &id).await,
        app.list_contractors(Some(&token), "").await,
    ];
    for response in responses {
        expect_problem(response, StatusCode::FORBIDDEN).await;
    }
    let list = expect_json(app.list_contractors(Some(&app.admin()), "").await, StatusCode::OK).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "nothing was created");
}

// ===========================================================================
// Jobs
// ===========================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_creates_a_job_in_its_own_region_and_it_is_unassigned() {
    let app = spawn_app().await;
    let response = app
        .post_job(
            Some(&app.dispatcher(&["south", "north"])),
            &json!({
                "jobType": "Flooring",
                "region": "north",
                "durationMinutes": 90,
                "title": "Kitchen",
                "desiredStartUtc": "2030-01-15T10:00:00+01:00",
                "address": "1 Main St"
            }),
        )
        .await;
    let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let job = expect_json(response, StatusCode::CREATED).await;
    assert!(is_uuid(&job["id"]), "{job:#}");
    assert_eq!(job["status"], "Unassigned");
    assert_eq!(job["jobType"], "Flooring");
    assert_eq!(job["region"], "north");
    assert_eq!(job["durationMinutes"], 90);
    assert_eq!(job["title"], "Kitchen");
    assert_eq!(job["address"], "1 Main St");
    assert_eq!(job["desiredStartUtc"], "2030-01-15T09:00:00Z", "times are returned in UTC with Z");
    assert!(is_utc_z(&job["createdAtUtc"]), "{job:#}");
    if let Some(location) = location {
        assert_eq!(location, format!("/api/jobs/{}", id_of(&job, "id")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_needs_only_job_type_region_and_duration() {
    let app = spawn_app().await;
    let response =
        app.post_job(Some(&app.admin()), &json!({ "jobType": "Tile", "region": "north", "durationMinutes": 30 })).await;
    let job = expect_json(response, StatusCode::CREATED).await;
    assert_eq!(job["status"], "Unassigned");
    assert!(job["title"].is_null());
    assert!(job["desiredStartUtc"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_may_not_create_a_job_in_another_region() {
    let app = spawn_app().await;
    let response = app
        .post_job(
            Some(&app.dispatcher(&["south"])),
            &json!({ "jobType": "Flooring", "region": "north", "durationMinutes": 60 }),
        )
        .await;
    expect_problem(response, StatusCode::FORBIDDEN).await;
    let jobs = expect_json(app.list_jobs(Some(&app.admin()), "").await, StatusCode::OK).await;
    assert_eq!(jobs, json!([]), "no job was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_jobs_in_any_region() {
    let app = spawn_app().await;
    for region in ["north", "south", "far-east.9"] {
        let response = app
            .post_job(Some(&app.admin()), &json!({ "jobType": "Flooring", "region": region, "durationMinutes": 60 }))
            .await;
        let job = expect_json(response, StatusCode::CREATED).await;
        assert_eq!(job["region"], region);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_token_may_not_create_or_read_jobs() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let token = app.contractor(Uuid::new_v4());
    let responses = [
        app.post_job(Some(&token), &json!({ "jobType": "Flooring", "region": "north", "durationMinutes": 60 })).await,
        app.get_job(Some(&token), &job_id).await,
        app.list_jobs(Some(&token), "").await,
    ];
    for response in responses {
        expect_problem(response, StatusCode::FORBIDDEN).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_endpoints_without_a_token_are_401_problems() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let responses = [
        app.post_job(None, &json!({ "jobType": "Flooring", "region": "north", "durationMinutes": 60 })).await,
        app.get_job(None, &job_id).await,
        app.list_jobs(None, "").await,
        app.get_job(Some(&app.expired_admin()), &job_id).await,
    ];
    for response in responses {
        expect_problem(response, StatusCode::UNAUTHORIZED).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_a_zero_or_negative_duration_is_a_400_problem() {
    let app = spawn_app().await;
    for minutes in [0, -1, -120] {
        let response = app
            .post_job(
                Some(&app.admin()),
                &json!({ "jobType": "Flooring", "region": "north", "durationMinutes": minutes }),
            )
            .await;
        let problem = expect_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains("durationMinutes"), "{problem:#}");
    }
    let jobs = expect_json(app.list_jobs(Some(&app.admin()), "").await, StatusCode::OK).await;
    assert_eq!(jobs, json!([]), "no job was stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_longer_than_a_week_or_with_a_non_integer_duration_is_a_400_problem() {
    let app = spawn_app().await;
    for minutes in [json!(7 * 24 * 60 + 1), json!(1.5), json!("60")] {
        let response = app
            .post_job(
                Some(&app.admin()),
                &json!({ "jobType": "Flooring", "region": "north", "durationMinutes": minutes }),
            )
            .await;
        expect_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_an_unparsable_desired_start_is_a_400_problem() {
    let app = spawn_app().await;
    for desired in ["tomorrow", "2030-01-15 09:00", "2030-13-01T00:00:00Z"] {
        let response = app
            .post_job(
                Some(&app.admin()),
                &json!({
                    "jobType": "Flooring",
                    "region": "north",
                    "durationMinutes": 60,
                    "desiredStartUtc": desired
                }),
            )
            .await;
        let problem = expect_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(problem["detail"].as_str().unwrap().contains("desiredStartUtc"), "{problem:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_missing_a_required_field_or_with_an_unknown_one_is_a_400_problem() {
    let app = spawn_app().await;
    for body in [
        json!({ "region": "north", "durationMinutes": 60 }),
        json!({ "jobType": "Flooring", "durationMinutes": 60 }),
        json!({ "jobType": "Flooring", "region": "north" }),
        json!({ "jobType": "", "region": "north", "durationMinutes": 60 }),
        json!({ "jobType": "Flooring", "region": "a/b", "durationMinutes": 60 }),
        json!({ "jobType": "Flooring", "region": "north", "durationMinutes": 60, "priority": 1 }),
    ] {
        let response = app.post_job(Some(&app.admin()), &body).await;
        expect_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn getting_a_job_by_id_returns_it_and_unknown_or_malformed_ids_are_404_problems() {
    let app = spawn_app().await;
    let job = app.create_job("north").await;
    let token = app.dispatcher(&["north"]);

    let fetched = expect_json(app.get_job(Some(&token), &id_of(&job, "id")).await, StatusCode::OK).await;
    assert_eq!(fetched, job);

    let response = app.get_job(Some(&token), &Uuid::new_v4().to_string()).await;
    expect_problem(response, StatusCode::NOT_FOUND).await;
    let response = app.get_job(Some(&token), "12345").await;
    expect_problem(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_jobs_filters_by_region_and_status() {
    let app = spawn_app().await;
    let north_a = app.job_id("north").await;
    let north_b = app.job_id("north").await;
    let south = app.job_id("south").await;
    let contractor = app.contractor_id("north").await;
    app.assign_ok(&north_a, &contractor, START, END).await;
    let token = app.admin();

    let ids = |list: &Value| -> HashSet<String> {
        list.as_array().expect("a JSON array").iter().map(|j| id_of(j, "id")).collect()
    };

    let all = expect_json(app.list_jobs(Some(&token), "").await, StatusCode::OK).await;
    assert_eq!(ids(&all), HashSet::from([north_a.clone(), north_b.clone(), south.clone()]));

    let north = expect_json(app.list_jobs(Some(&token), "region=north").await, StatusCode::OK).await;
    assert_eq!(ids(&north), HashSet::from([north_a.clone(), north_b.clone()]));

    let unassigned =
        expect_json(app.list_jobs(Some(&token), "region=north&status=Unassigned").await, StatusCode::OK).await;
    assert_eq!(ids(&unassigned), HashSet::from([north_b.clone()]));
    assert_eq!(unassigned[0]["status"], "Unassigned");

    let assigned = expect_json(app.list_jobs(Some(&token), "region=north&status=Assigned").await, StatusCode::OK).await;
    assert_eq!(ids(&assigned), HashSet::from([north_a.clone()]));
    assert_eq!(assigned[0]["status"], "Assigned");

    let all_unassigned = expect_json(app.list_jobs(Some(&token), "status=Unassigned").await, StatusCode::OK).await;
    assert_eq!(ids(&all_unassigned), HashSet::from([north_b, south]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_jobs_with_an_unknown_status_or_a_bad_region_is_a_400_problem() {
    let app = spawn_app().await;
    for query in ["status=Bogus", "status=assigned", "region=north&status=", "region=a%2Fb"] {
        let response = app.list_jobs(Some(&app.admin()), query).await;
        expect_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_outside_1_to_1000_is_a_400_problem_on_every_list() {
    let app = spawn_app().await;
    let token = app.admin();
    for limit in ["0", "5000", "1001", "-1", "many"] {
        let query = format!("limit={limit}");
        for response in [
            app.list_contractors(Some(&token), &query).await,
            app.list_jobs(Some(&token), &query).await,
            app.list_events(Some(&token), &query).await,
        ] {
            expect_problem(response, StatusCode::BAD_REQUEST).await;
        }
    }
    for limit in ["1", "1000"] {
        let query = format!("limit={limit}");
        expect_json(app.list_contractors(Some(&token), &query).await, StatusCode::OK).await;
        expect_json(app.list_jobs(Some(&token), &query).await, StatusCode::OK).await;
        expect_json(app.list_events(Some(&token), &query).await, StatusCode::OK).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reads_as_assigned_after_its_assignment() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    app.assign_ok(&job_id, &contractor, START, END).await;
    let job = expect_json(app.get_job(Some(&app.admin()), &job_id).await, StatusCode::OK).await;
    assert_eq!(job["status"], "Assigned");
}

// ===========================================================================
// Assign
// ===========================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_a_job_returns_201_with_exactly_the_contract_assignment_fields() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let response = app.assign(Some(&app.dispatcher(&["north"])), &job_id, &assign_body(&contractor)).await;
    let assignment = expect_json(response, StatusCode::CREATED).await;

    assert_eq!(
        keys(&assignment),
        [
            "assignmentId",
            "auditId",
            "contractorId",
            "createdAtUtc",
            "endUtc",
            "eventId",
            "jobId",
            "region",
            "source",
            "startUtc"
        ]
    );
    assert!(is_uuid(&assignment["assignmentId"]), "{assignment:#}");
    assert!(is_uuid(&assignment["eventId"]), "{assignment:#}");
    assert_eq!(assignment["jobId"], job_id.as_str());
    assert_eq!(assignment["contractorId"], contractor.as_str());
    assert_eq!(assignment["startUtc"], START);
    assert_eq!(assignment["endUtc"], END);
    assert_eq!(assignment["source"], "manual", "source defaults to manual");
    assert!(assignment["auditId"].is_null(), "{assignment:#}");
    assert_eq!(assignment["region"], "north");
    assert!(is_utc_z(&assignment["createdAtUtc"]), "{assignment:#}");
    assert_ne!(assignment["assignmentId"], assignment["eventId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_source_auto_and_an_audit_id_echoes_both() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let audit = Uuid::new_v4().to_string();
    let response = app
        .assign(
            Some(&app.admin()),
            &job_id,
            &json!({
                "contractorId": contractor,
                "startUtc": START,
                "endUtc": END,
                "source": "auto",
                "auditId": audit
            }),
        )
        .await;
    let assignment = expect_json(response, StatusCode::CREATED).await;
    assert_eq!(assignment["source"], "auto");
    assert_eq!(assignment["auditId"], audit.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignment_times_given_with_an_offset_come_back_in_utc_with_z() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let assignment =
        app.assign_ok(&job_id, &contractor, "2030-01-15T10:00:00+01:00", "2030-01-15T12:30:00.250+01:00").await;
    assert_eq!(assignment["startUtc"], "2030-01-15T09:00:00Z");
    assert_eq!(assignment["endUtc"], "2030-01-15T11:30:00.250Z");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_a_contractor_id_that_is_not_a_uuid_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let problem =
        assert_assign_refused(&app, Some(&app.admin()), &job_id, &assign_body("not-a-uuid"), StatusCode::BAD_REQUEST)
            .await;
    assert!(problem["detail"].as_str().unwrap().contains("contractorId"), "{problem:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_an_end_before_the_start_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let problem = assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &json!({ "contractorId": contractor, "startUtc": END, "endUtc": START }),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("endUtc"), "{problem:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_an_end_equal_to_the_start_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &json!({ "contractorId": contractor, "startUtc": START, "endUtc": START }),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // The same instant written with another offset is still equal.
    assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &json!({
            "contractorId": contractor,
            "startUtc": "2030-01-15T09:00:00Z",
            "endUtc": "2030-01-15T10:00:00+01:00"
        }),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_an_unknown_source_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    for source in ["robot", "Manual", ""] {
        let problem = assert_assign_refused(
            &app,
            Some(&app.admin()),
            &job_id,
            &json!({ "contractorId": contractor, "startUtc": START, "endUtc": END, "source": source }),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(problem["detail"].as_str().unwrap().contains("source"), "{problem:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_a_missing_field_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    for body in [
        json!({ "startUtc": START, "endUtc": END }),
        json!({ "contractorId": contractor, "endUtc": END }),
        json!({ "contractorId": contractor, "startUtc": START }),
        json!({}),
    ] {
        assert_assign_refused(&app, Some(&app.admin()), &job_id, &body, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_an_audit_id_that_is_not_a_uuid_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let problem = assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &json!({ "contractorId": contractor, "startUtc": START, "endUtc": END, "auditId": "audit-1" }),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("auditId"), "{problem:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_with_unparsable_times_or_an_unknown_field_is_a_400_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    for body in [
        json!({ "contractorId": contractor, "startUtc": "soon", "endUtc": END }),
        json!({ "contractorId": contractor, "startUtc": START, "endUtc": "2030-01-15" }),
        json!({ "contractorId": contractor, "startUtc": START, "endUtc": END, "notes": "x" }),
        json!({ "contractorId": 42, "startUtc": START, "endUtc": END }),
    ] {
        assert_assign_refused(&app, Some(&app.admin()), &job_id, &body, StatusCode::BAD_REQUEST).await;
    }
    let job = expect_json(app.get_job(Some(&app.admin()), &job_id).await, StatusCode::OK).await;
    assert_eq!(job["status"], "Unassigned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_an_unknown_job_is_a_404_problem() {
    let app = spawn_app().await;
    let contractor = app.contractor_id("north").await;
    assert_assign_refused(
        &app,
        Some(&app.admin()),
        &Uuid::new_v4().to_string(),
        &assign_body(&contractor),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_assign_refused(&app, Some(&app.admin()), "not-a-job-id", &assign_body(&contractor), StatusCode::NOT_FOUND)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_to_an_unknown_contractor_is_a_404_problem_and_leaves_the_job_unassigned() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &assign_body(&Uuid::new_v4().to_string()),
        StatusCode::NOT_FOUND,
    )
    .await;
    let job = expect_json(app.get_job(Some(&app.admin()), &job_id).await, StatusCode::OK).await;
    assert_eq!(job["status"], "Unassigned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_an_already_assigned_job_is_a_409_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let first = app.contractor_id("north").await;
    let second = app.contractor_id("north").await;
    app.assign_ok(&job_id, &first, START, END).await;

    // Again to the same contractor, and to another one at another time.
    assert_assign_refused(&app, Some(&app.admin()), &job_id, &assign_body(&first), StatusCode::CONFLICT).await;
    assert_assign_refused(
        &app,
        Some(&app.admin()),
        &job_id,
        &json!({
            "contractorId": second,
            "startUtc": "2030-02-01T09:00:00Z",
            "endUtc": "2030-02-01T10:00:00Z"
        }),
        StatusCode::CONFLICT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_a_contractor_with_an_overlapping_assignment_is_a_409_problem() {
    let app = spawn_app().await;
    let first_job = app.job_id("north").await;
    let second_job = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    app.assign_ok(&first_job, &contractor, START, END).await;

    for (start, end) in [
        (START, END),                                     // the same interval
        ("2030-01-15T10:00:00Z", "2030-01-15T12:00:00Z"), // overlaps the end
        ("2030-01-15T08:00:00Z", "2030-01-15T09:00:01Z"), // overlaps the start
        ("2030-01-15T09:30:00Z", "2030-01-15T10:00:00Z"), // inside
        ("2030-01-15T08:00:00Z", "2030-01-15T12:00:00Z"), // around
    ] {
        assert_assign_refused(
            &app,
            Some(&app.admin()),
            &second_job,
            &json!({ "contractorId": contractor, "startUtc": start, "endUtc": end }),
            StatusCode::CONFLICT,
        )
        .await;
    }
    let job = expect_json(app.get_job(Some(&app.admin()), &second_job).await, StatusCode::OK).await;
    assert_eq!(job["status"], "Unassigned", "the refused job stays free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touching_intervals_of_one_contractor_do_not_overlap() {
    let app = spawn_app().await;
    let contractor = app.contractor_id("north").await;
    let middle = app.job_id("north").await;
    let after = app.job_id("north").await;
    let before = app.job_id("north").await;
    app.assign_ok(&middle, &contractor, START, END).await;
    app.assign_ok(&after, &contractor, END, "2030-01-15T12:00:00Z").await;
    app.assign_ok(&before, &contractor, "2030-01-15T08:00:00Z", START).await;
    assert_eq!(app.event_count().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_of_another_region_may_not_assign_the_job() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    assert_assign_refused(
        &app,
        Some(&app.dispatcher(&["south", "west"])),
        &job_id,
        &assign_body(&contractor),
        StatusCode::FORBIDDEN,
    )
    .await;
    // The job's own dispatcher may.
    let response = app.assign(Some(&app.dispatcher(&["north"])), &job_id, &assign_body(&contractor)).await;
    expect_json(response, StatusCode::CREATED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_token_may_not_assign_a_job() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let token = app.contractor(Uuid::parse_str(&contractor).unwrap());
    assert_assign_refused(&app, Some(&token), &job_id, &assign_body(&contractor), StatusCode::FORBIDDEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_cannot_probe_which_jobs_exist_through_assign() {
    let app = spawn_app().await;
    let contractor = app.contractor_id("north").await;
    let token = app.contractor(Uuid::parse_str(&contractor).unwrap());
    // An unknown job and a body that is not even valid: still 403, not 404 or 400.
    let unknown = Uuid::new_v4().to_string();
    assert_assign_refused(&app, Some(&token), &unknown, &assign_body(&contractor), StatusCode::FORBIDDEN).await;
    assert_assign_refused(
        &app,
        Some(&token),
        &unknown,
        &json!({ "contractorId": "nope", "startUtc": "x", "endUtc": "y" }),
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigning_without_a_valid_token_is_a_401_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    for token in [None, Some("garbage".to_owned()), Some(app.expired_admin()), Some(app.foreign_admin())] {
        assert_assign_refused(&app, token.as_deref(), &job_id, &assign_body(&contractor), StatusCode::UNAUTHORIZED)
            .await;
    }
}

// ===========================================================================
// Events
// ===========================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_assignment_is_published_with_the_contract_payload() {
    let app = spawn_app().await;
    let job = app.create_job("north").await;
    let job_id = id_of(&job, "id");
    let contractor = app.contractor_id("north").await;
    let audit = Uuid::new_v4().to_string();
    let response = app
        .assign(
            Some(&app.admin()),
            &job_id,
            &json!({
                "contractorId": contractor,
                "startUtc": START,
                "endUtc": END,
                "source": "auto",
                "auditId": audit
            }),
        )
        .await;
    let assignment = expect_json(response, StatusCode::CREATED).await;
    let event_id = id_of(&assignment, "eventId");

    let rows = app.wait_for_published(1, Duration::from_secs(5)).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let row = &rows[0];

    assert_eq!(
        keys(row),
        [
            "attempts",
            "eventId",
            "eventType",
            "lastError",
            "occurredAtUtc",
            "payload",
            "publishedAtUtc",
            "publishedGroups",
            "sequence",
            "status"
        ]
    );
    assert_eq!(row["eventId"], event_id.as_str());
    assert_eq!(row["eventType"], "JobAssigned");
    assert_eq!(row["status"], "Published");
    let sequence = row["sequence"].as_i64().expect("sequence is a number");
    assert!(sequence > 0);
    assert!(is_utc_z(&row["publishedAtUtc"]), "{row:#}");
    assert!(is_utc_z(&row["occurredAtUtc"]), "{row:#}");
    assert_eq!(row["publishedGroups"], json!(["dispatch/north", format!("contractor/{contractor}")]));
    assert_eq!(row["attempts"], 1);
    assert!(row["lastError"].is_null(), "{row:#}");

    let payload = &row["payload"];
    assert_eq!(payload["type"], "JobAssigned");
    assert_eq!(payload["schemaVersion"], 1);
    assert_eq!(payload["sequence"], json!(sequence));
    assert_eq!(payload["eventId"], event_id.as_str());
    assert_eq!(payload["occurredAtUtc"], row["occurredAtUtc"]);
    assert_eq!(payload["jobId"], job_id.as_str());
    assert_eq!(payload["contractorId"], contractor.as_str());
    assert_eq!(payload["assignmentId"], assignment["assignmentId"]);
    assert_eq!(payload["startUtc"], START);
    assert_eq!(payload["endUtc"], END);
    assert_eq!(payload["region"], "north");
    assert_eq!(payload["source"], "auto");
    assert_eq!(payload["auditId"], audit.as_str());
    assert_eq!(payload["job"]["id"], job_id.as_str());
    assert_eq!(payload["job"]["jobType"], job["jobType"]);
    assert_eq!(payload["job"]["title"], job["title"]);
    assert_eq!(payload["job"]["region"], "north");
    assert_eq!(payload["job"]["status"], "Assigned");
    assert_eq!(payload["job"]["durationMinutes"], 120);
    assert!(serde_json::to_vec(payload).unwrap().len() < 2048, "the payload stays under 2 KiB");

    // The same row through GET /api/events/{eventId}.
    let by_id = app.wait_until_event_published(&event_id).await;
    assert_eq!(&by_id, row);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_of_a_manual_assignment_has_a_null_audit_id() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let assignment = app.assign_ok(&job_id, &contractor, START, END).await;
    let row = app.wait_until_event_published(&id_of(&assignment, "eventId")).await;
    assert_eq!(row["payload"]["source"], "manual");
    assert!(row["payload"]["auditId"].is_null(), "{row:#}");
    assert_eq!(row["payload"]["sequence"], row["sequence"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_can_be_read_by_id_and_unknown_or_malformed_ids_are_404_problems() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let assignment = app.assign_ok(&job_id, &contractor, START, END).await;
    let event_id = id_of(&assignment, "eventId");

    let row = expect_json(app.get_event(Some(&app.dispatcher(&["north"])), &event_id).await, StatusCode::OK).await;
    assert_eq!(row["eventId"], event_id.as_str());
    assert_eq!(row["eventType"], "JobAssigned");

    let response = app.get_event(Some(&app.admin()), &Uuid::new_v4().to_string()).await;
    expect_problem(response, StatusCode::NOT_FOUND).await;
    let response = app.get_event(Some(&app.admin()), "nope").await;
    expect_problem(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sequence_returns_only_later_events_and_the_next_cursor() {
    let app = spawn_app().await;
    let mut event_ids = Vec::new();
    for _ in 0..3 {
        let job_id = app.job_id("north").await;
        let contractor = app.contractor_id("north").await;
        let assignment = app.assign_ok(&job_id, &contractor, START, END).await;
        event_ids.push(id_of(&assignment, "eventId"));
    }
    let rows = app.wait_for_published(3, Duration::from_secs(5)).await;
    let mut sequences: Vec<(i64, String)> =
        rows.iter().map(|r| (r["sequence"].as_i64().unwrap(), id_of(r, "eventId"))).collect();
    sequences.sort();
    let token = app.admin();

    // After the first: the two later ones, in sequence order.
    let page =
        expect_json(app.list_events(Some(&token), &format!("afterSequence={}", sequences[0].0)).await, StatusCode::OK)
            .await;
    let items = page["items"].as_array().unwrap();
    let got: Vec<(i64, String)> =
        items.iter().map(|r| (r["sequence"].as_i64().unwrap(), id_of(r, "eventId"))).collect();
    assert_eq!(got, sequences[1..].to_vec());
    assert_eq!(page["nextAfterSequence"], json!(sequences[2].0));

    // A page of one follows with the cursor.
    let page = expect_json(
        app.list_events(Some(&token), &format!("afterSequence={}&limit=1", sequences[0].0)).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["eventId"], sequences[1].1.as_str());
    assert_eq!(page["nextAfterSequence"], json!(sequences[1].0));

    // After the last: nothing, and the cursor stays.
    let page =
        expect_json(app.list_events(Some(&token), &format!("afterSequence={}", sequences[2].0)).await, StatusCode::OK)
            .await;
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["nextAfterSequence"], json!(sequences[2].0));

    // From 0: all three.
    let page = expect_json(app.list_events(Some(&token), "afterSequence=0").await, StatusCode::OK).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let all: HashSet<String> = sequences.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(all, event_ids.into_iter().collect::<HashSet<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_events_with_a_negative_after_sequence_is_a_400_problem() {
    let app = spawn_app().await;
    for query in ["afterSequence=-1", "afterSequence=abc"] {
        let response = app.list_events(Some(&app.admin()), query).await;
        expect_problem(response, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_events_with_an_unknown_status_is_a_400_problem_and_known_ones_filter() {
    let app = spawn_app().await;
    let response = app.list_events(Some(&app.admin()), "status=Bogus").await;
    expect_problem(response, StatusCode::BAD_REQUEST).await;

    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    app.assign_ok(&job_id, &contractor, START, END).await;
    app.wait_for_published(1, Duration::from_secs(5)).await;
    for (status, expected) in [("Published", 1), ("Pending", 0), ("Failed", 0)] {
        let page =
            expect_json(app.list_events(Some(&app.admin()), &format!("status={status}")).await, StatusCode::OK).await;
        assert_eq!(page["items"].as_array().unwrap().len(), expected, "status={status}: {page:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_may_not_read_the_event_log() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let assignment = app.assign_ok(&job_id, &contractor, START, END).await;
    let token = app.contractor(Uuid::parse_str(&contractor).unwrap());
    expect_problem(app.list_events(Some(&token), "").await, StatusCode::FORBIDDEN).await;
    expect_problem(app.get_event(Some(&token), &id_of(&assignment, "eventId")).await, StatusCode::FORBIDDEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_log_without_a_valid_token_is_a_401_problem() {
    let app = spawn_app().await;
    expect_problem(app.list_events(None, "").await, StatusCode::UNAUTHORIZED).await;
    expect_problem(app.get_event(None, &Uuid::new_v4().to_string()).await, StatusCode::UNAUTHORIZED).await;
    expect_problem(app.list_events(Some(&app.foreign_admin()), "").await, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_service_has_an_empty_event_log() {
    let app = spawn_app().await;
    let page = expect_json(app.list_events(Some(&app.dispatcher(&["north"])), "").await, StatusCode::OK).await;
    assert_eq!(page["items"], json!([]));
    assert_eq!(page["nextAfterSequence"], 0);
}

// ===========================================================================
// Health, routing and bodies
// ===========================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_is_live_and_ready_without_a_token() {
    let app = spawn_app().await;
    assert_eq!(app.live().await.status(), StatusCode::OK);
    assert_eq!(app.ready().await.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_is_a_404_problem() {
    let app = spawn_app().await;
    expect_problem(app.get("/api/nothing-here").await, StatusCode::NOT_FOUND).await;
    expect_problem(app.get("/nothing-here").await, StatusCode::NOT_FOUND).await;
    let response = app.request(Method::GET, "/api/assignments", Some(&app.admin())).send().await.unwrap();
    expect_problem(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_path_with_an_unsupported_method_is_a_405_problem_with_allow() {
    let app = spawn_app().await;
    let job = app.job_id("north").await;
    let cases = [
        (Method::DELETE, "/api/contractors".to_owned(), "POST, GET, HEAD"),
        (Method::PUT, format!("/api/jobs/{job}"), "GET, HEAD"),
        (Method::GET, format!("/api/jobs/{job}/assign"), "POST"),
        (Method::PATCH, "/api/events".to_owned(), "GET, HEAD"),
        (Method::POST, "/health/ready".to_owned(), "GET, HEAD"),
        (Method::DELETE, "/metrics".to_owned(), "GET, HEAD"),
        (Method::POST, "/api/openapi.json".to_owned(), "GET, HEAD"),
        (Method::POST, "/".to_owned(), "GET, HEAD"),
        (Method::GET, "/hubs/jobs/negotiate".to_owned(), "POST"),
        (Method::PUT, "/hubs/jobs".to_owned(), "GET, POST, DELETE"),
    ];
    for (method, path, allow) in cases {
        let response = app.request(method.clone(), &path, Some(&app.admin())).send().await.unwrap();
        assert_eq!(response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()), Some(allow.to_owned()));
        let problem = expect_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
        assert_eq!(problem["type"], "/problems/method-not-allowed", "{method} {path}: {problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_every_operation_in_it_reaches_its_handler() {
    let app = spawn_app().await;
    let response = app.get("/api/openapi.json").await;
    assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    let doc = expect_json(response, StatusCode::OK).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap().iter().filter(|(k, _)| ["get", "post"].contains(&k.as_str())) {
            operations += 1;
            let concrete = path.replace("{id}", &Uuid::new_v4().to_string());
            let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let mut request = app.request(method.clone(), &concrete, Some(&app.admin()));
            if method == Method::POST {
                request = request.json(&json!({}));
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            // The router's own answers: no route (404 naming no resource) or no such method (405).
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {body}");
            assert!(!body.contains("no route matches"), "{method} {path} is documented but not routed: {body}");
            assert!(status.as_u16() < 500, "{method} {path}: {status} {body}");
        }
    }
    assert!(operations >= 20, "only {operations} operations documented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_64_kib_is_a_413_problem_on_every_post() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let filler = "x".repeat(70 * 1024);
    let before = app.event_count().await;
    for (path, body) in [
        ("/api/contractors".to_owned(), json!({ "name": filler, "region": "north" })),
        (
            "/api/jobs".to_owned(),
            json!({ "jobType": "Flooring", "region": "north", "durationMinutes": 60, "title": filler }),
        ),
        (
            format!("/api/jobs/{job_id}/assign"),
            json!({ "contractorId": contractor, "startUtc": START, "endUtc": END, "source": filler }),
        ),
    ] {
        let response = app.request(Method::POST, &path, Some(&app.admin())).json(&body).send().await.unwrap();
        expect_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    }
    assert_eq!(app.event_count().await, before, "nothing was published");
    let job = expect_json(app.get_job(Some(&app.admin()), &job_id).await, StatusCode::OK).await;
    assert_eq!(job["status"], "Unassigned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_64_kib_without_a_length_is_a_413_problem() {
    let app = spawn_app().await;
    let chunk = "x".repeat(8 * 1024);
    let mut body = String::new();
    for _ in 0..9 {
        body.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    body.push_str("0\r\n\r\n");
    let request = format!(
        "POST /api/contractors HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}",
        app.admin()
    );
    let (status, head, payload) = app.raw_http(request).await;
    assert_eq!(status, 413, "{head}\n{payload}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/problem+json"), "{head}");
    let problem: Value = serde_json::from_str(&payload).expect("a JSON problem");
    assert_eq!(problem["status"], 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_as_text_plain_is_a_415_problem_on_every_post() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let before = app.event_count().await;
    for (path, body) in [
        ("/api/contractors".to_owned(), json!({ "name": "Ana", "region": "north" })),
        ("/api/jobs".to_owned(), json!({ "jobType": "Flooring", "region": "north", "durationMinutes": 60 })),
        (format!("/api/jobs/{job_id}/assign"), assign_body(&contractor)),
    ] {
        let response = app
            .request(Method::POST, &path, Some(&app.admin()))
            .header(CONTENT_TYPE, "text/plain")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        expect_problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    }
    assert_eq!(app.event_count().await, before, "nothing was published");
    let contractors = expect_json(app.list_contractors(Some(&app.admin()), "").await, StatusCode::OK).await;
    assert_eq!(contractors.as_array().map(Vec::len), Some(1));
}

// ===========================================================================
// Concurrency
// ===========================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_assignments_are_all_committed_and_each_published_once_in_sequence_order() {
    const N: usize = 200;
    let app = Arc::new(spawn_app().await);
    let mut pairs = Vec::with_capacity(N);
    for _ in 0..N {
        pairs.push((app.job_id("north").await, app.contractor_id("north").await));
    }

    let token = Arc::new(app.admin());
    let barrier = Arc::new(Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for (job_id, contractor) in pairs.clone() {
        let app = app.clone();
        let token = token.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let response = app.assign(Some(&token), &job_id, &assign_body(&contractor)).await;
            (job_id, expect_json(response, StatusCode::CREATED).await)
        });
    }
    let mut assignments = Vec::with_capacity(N);
    while let Some(result) = tasks.join_next().await {
        let (job_id, assignment) = result.expect("the task did not panic");
        assert_eq!(assignment["jobId"], job_id.as_str());
        assignments.push(assignment);
    }
    assert_eq!(assignments.len(), N, "all {N} answered 201");

    let rows = app.wait_for_published(N, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), N);
    assert_eq!(app.event_count().await, N, "exactly one row per assignment");

    let event_ids: Vec<String> = rows.iter().map(|r| id_of(r, "eventId")).collect();
    let unique: HashSet<&String> = event_ids.iter().collect();
    assert_eq!(unique.len(), N, "each eventId appears exactly once");
    for assignment in &assignments {
        let event_id = id_of(assignment, "eventId");
        assert!(unique.contains(&event_id), "event {event_id} of an assignment is missing");
    }

    for row in &rows {
        assert_eq!(row["status"], "Published");
        assert_eq!(row["attempts"], 1);
        assert_eq!(row["payload"]["sequence"], row["sequence"]);
    }
    let listed: Vec<i64> =
        rows.iter().map(|r| r["sequence"].as_i64().expect("a published row has a sequence")).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    assert!(sorted.windows(2).all(|w| w[0] < w[1]), "sequences are unique: {sorted:?}");
    assert_eq!(listed, sorted, "published rows are listed in sequence order");

    // Paging with the cursor gives them all, strictly increasing.
    let mut cursor = 0;
    let mut paged = Vec::new();
    loop {
        let page = expect_json(
            app.list_events(Some(&token), &format!("afterSequence={cursor}&limit=64")).await,
            StatusCode::OK,
        )
        .await;
        let items = page["items"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        paged.extend(items.iter().map(|r| r["sequence"].as_i64().unwrap()));
        cursor = page["nextAfterSequence"].as_i64().unwrap();
    }
    assert_eq!(paged, sorted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_assignments_of_the_same_job_have_exactly_one_winner() {
    const ROUNDS: usize = 20;
    let app = Arc::new(spawn_app().await);
    let token = Arc::new(app.admin());
    for round in 0..ROUNDS {
        let job_id = app.job_id("north").await;
        let first = app.contractor_id("north").await;
        let second = app.contractor_id("north").await;
        let barrier = Arc::new(Barrier::new(2));
        let mut tasks = tokio::task::JoinSet::new();
        for contractor in [first, second] {
            let (app, token, barrier, job_id) = (app.clone(), token.clone(), barrier.clone(), job_id.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                app.assign(Some(&token), &job_id, &assign_body(&contractor)).await
            });
        }
        let mut statuses = Vec::new();
        while let Some(result) = tasks.join_next().await {
            let response = result.expect("the task did not panic");
            let status = response.status();
            if status == StatusCode::CONFLICT {
                expect_problem(response, status).await;
            }
            statuses.push(status);
        }
        statuses.sort();
        assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT], "round {round}");
        let job = expect_json(app.get_job(Some(&token), &job_id).await, StatusCode::OK).await;
        assert_eq!(job["status"], "Assigned");
    }
    assert_eq!(app.event_count().await, ROUNDS, "one event per job, none for the losers");
    app.wait_for_published(ROUNDS, Duration::from_secs(10)).await;
}

// ===========================================================================
// Idempotency-Key (in the contract, not implemented yet)
// ===========================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_an_assignment_with_the_same_idempotency_key_returns_the_first_answer_and_publishes_nothing_new() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let send = || async {
        app.request(Method::POST, &format!("/api/jobs/{job_id}/assign"), Some(&app.admin()))
            .header("Idempotency-Key", "assign-once-1")
            .json(&assign_body(&contractor))
            .send()
            .await
            .unwrap()
    };
    let first = expect_json(send().await, StatusCode::CREATED).await;
    let again = expect_json(send().await, StatusCode::CREATED).await;
    assert_eq!(again, first, "the first answer, again");
    assert_eq!(app.event_count().await, 1, "nothing new was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_an_idempotency_key_with_another_body_is_a_422_problem() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let path = format!("/api/jobs/{job_id}/assign");
    let response = app
        .request(Method::POST, &path, Some(&app.admin()))
        .header("Idempotency-Key", "assign-once-2")
        .json(&assign_body(&contractor))
        .send()
        .await
        .unwrap();
    expect_json(response, StatusCode::CREATED).await;
    let before = app.event_count().await;
    let response = app
        .request(Method::POST, &path, Some(&app.admin()))
        .header("Idempotency-Key", "assign-once-2")
        .json(&json!({ "contractorId": contractor, "startUtc": START, "endUtc": "2030-01-15T12:00:00Z" }))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(app.event_count().await, before, "nothing new was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_repeats_of_one_idempotency_key_all_get_the_one_first_answer() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let path = format!("/api/jobs/{job_id}/assign");
    let sends = (0..10).map(|_| {
        app.request(Method::POST, &path, Some(&app.admin()))
            .header("Idempotency-Key", "race-1")
            .json(&assign_body(&contractor))
            .send()
    });
    let responses = futures_util::future::join_all(sends).await;
    let mut bodies = Vec::new();
    for response in responses {
        bodies.push(expect_json(response.unwrap(), StatusCode::CREATED).await);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "every repeat returns the same assignment");
    assert_eq!(app.event_count().await, 1, "one event for ten requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_from_the_same_caller_after_losing_the_region_is_403_not_the_first_answer() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let path = format!("/api/jobs/{job_id}/assign");
    let send = |token: String| {
        app.request(Method::POST, &path, Some(&token))
            .header("Idempotency-Key", "lost-region")
            .json(&assign_body(&contractor))
            .send()
    };
    expect_json(send(app.dispatcher(&["north"])).await.unwrap(), StatusCode::CREATED).await;
    // The same `sub`, whose token now names south only.
    let refused = send(app.dispatcher(&["south"])).await.unwrap();
    assert!(refused.headers().get("idempotent-replayed").is_none(), "not a replay");
    let problem = expect_problem(refused, StatusCode::FORBIDDEN).await;
    assert!(problem["detail"].as_str().unwrap().contains("north"), "{problem}");
    // Still allowed: the first answer, as before.
    let again = send(app.dispatcher(&["north", "south"])).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    expect_json(again, StatusCode::CREATED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_per_caller_and_must_be_visible_ascii() {
    let app = spawn_app().await;
    let job_id = app.job_id("north").await;
    let contractor = app.contractor_id("north").await;
    let path = format!("/api/jobs/{job_id}/assign");
    for bad in ["", " ", &"k".repeat(256)] {
        let response = app
            .request(Method::POST, &path, Some(&app.admin()))
            .header("Idempotency-Key", bad)
            .json(&assign_body(&contractor))
            .send()
            .await
            .unwrap();
        expect_problem(response, StatusCode::BAD_REQUEST).await;
    }
    assert_eq!(app.event_count().await, 0);
    // The same key from another caller is another key: it does not replay
    // the first caller's answer (here it meets the assigned job: 409).
    let first = app
        .request(Method::POST, &path, Some(&app.admin()))
        .header("Idempotency-Key", "shared")
        .json(&assign_body(&contractor))
        .send()
        .await
        .unwrap();
    expect_json(first, StatusCode::CREATED).await;
    let other = app
        .request(Method::POST, &path, Some(&app.dispatcher(&["north"])))
        .header("Idempotency-Key", "shared")
        .json(&assign_body(&contractor))
        .send()
        .await
        .unwrap();
    expect_problem(other, StatusCode::CONFLICT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id_echoing_a_sane_one_from_the_caller() {
    let app = spawn_app().await;
    let fresh = app.live().await;
    let id = fresh.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(Uuid::parse_str(&id).is_ok(), "a generated id: {id}");

    let echoed =
        app.request(Method::GET, "/health/live", None).header("X-Request-Id", "trace-42.a_b").send().await.unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-42.a_b");

    let hostile =
        app.request(Method::GET, "/health/live", None).header("X-Request-Id", "a b\"<script>").send().await.unwrap();
    let replaced = hostile.headers()["x-request-id"].to_str().unwrap();
    assert!(Uuid::parse_str(replaced).is_ok(), "an unsafe id is replaced: {replaced}");
}
