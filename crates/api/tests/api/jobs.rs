//! The jobs resource over HTTP (`docs/contract.md`): create in a region,
//! read, list by region and status, validation and roles.

use std::collections::HashSet;

use crate::support::{expect_json, expect_problem, id_of, is_utc_z, is_uuid, spawn_app, END, START};
use reqwest::header::LOCATION;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_texts_would_push_a_job_assigned_past_2_kib_is_400_on_its_address_and_not_stored() {
    let app = spawn_app().await;
    let wide = "\u{1F6E0}"; // 4 bytes in UTF-8
    let body = |address: String| {
        json!({
            "jobType": wide.repeat(64), "region": "north", "durationMinutes": 60,
            "title": wide.repeat(200), "address": address,
        })
    };
    // 256 + 800 bytes of jobType and title leave 144 for the address.
    let fits = expect_json(app.post_job(Some(&app.admin()), &body("a".repeat(144))).await, StatusCode::CREATED).await;
    assert_eq!(fits["address"].as_str().map(str::len), Some(144));
    let refused =
        expect_problem(app.post_job(Some(&app.admin()), &body("a".repeat(145))).await, StatusCode::BAD_REQUEST).await;
    let detail = refused["detail"].as_str().expect("a detail");
    assert!(detail.contains("address") && detail.contains("1201 bytes") && detail.contains("1200"), "{detail}");
    let listed = expect_json(app.list_jobs(Some(&app.admin()), "region=north").await, StatusCode::OK).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "only the job that fits was stored");
}
