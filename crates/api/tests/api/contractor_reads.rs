//! Contractors read what is theirs (contract: `GET /api/jobs/{id}` for a job
//! assigned to the caller, `GET /api/contractors/{id}/assignments`), and
//! nobody reads more than the contract gives.

use std::time::Duration;

use crate::support::{expect_json, expect_problem, spawn_app, TestApp, END, START};
use reqwest::{Method, StatusCode};
use uuid::Uuid;

const LATER_START: &str = "2030-01-16T09:00:00Z";
const LATER_END: &str = "2030-01-16T11:00:00Z";

async fn list_assignments(app: &TestApp, token: Option<&str>, contractor_id: &str, query: &str) -> reqwest::Response {
    app.request(Method::GET, &format!("/api/contractors/{contractor_id}/assignments{query}"), token)
        .send()
        .await
        .expect("the request is sent")
}

/// (what it checks, token, contractor id, query, status, a part of the detail)
type RefusalCase<'a> = (&'a str, Option<String>, String, &'a str, StatusCode, &'a str);

fn uuid(id: &str) -> Uuid {
    Uuid::parse_str(id).expect("a UUID")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_reads_a_job_assigned_to_it_and_no_other() {
    let app = spawn_app().await;
    let ana = app.contractor_id("north").await;
    let bo = app.contractor_id("north").await;
    let anas_job = app.job_id("north").await;
    let bos_job = app.job_id("north").await;
    let unassigned_job = app.job_id("north").await;
    app.assign_ok(&anas_job, &ana, START, END).await;
    app.assign_ok(&bos_job, &bo, START, END).await;
    let token = app.contractor(uuid(&ana));

    let own = expect_json(app.get_job(Some(&token), &anas_job).await, StatusCode::OK).await;
    let others = expect_problem(app.get_job(Some(&token), &bos_job).await, StatusCode::FORBIDDEN).await;
    let unassigned = expect_problem(app.get_job(Some(&token), &unassigned_job).await, StatusCode::FORBIDDEN).await;
    let unknown =
        expect_problem(app.get_job(Some(&token), &Uuid::new_v4().to_string()).await, StatusCode::NOT_FOUND).await;

    assert_eq!(own["id"], anas_job.as_str());
    assert_eq!(own["status"], "Assigned");
    assert_eq!(others["detail"], "a contractor may read only the jobs assigned to it");
    assert_eq!(unassigned["detail"], "a contractor may read only the jobs assigned to it");
    assert!(unknown["detail"].as_str().unwrap().contains("does not exist"), "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_lists_its_own_assignments_newest_first_each_with_its_job() {
    let app = spawn_app().await;
    let ana = app.contractor_id("north").await;
    let bo = app.contractor_id("north").await;
    let first_job = app.job_id("north").await;
    let second_job = app.job_id("north").await;
    let bos_job = app.job_id("north").await;
    let first = app.assign_ok(&first_job, &ana, START, END).await;
    // Creation times are kept to the millisecond: keep the two apart so "newest" is defined.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = app.assign_ok(&second_job, &ana, LATER_START, LATER_END).await;
    app.assign_ok(&bos_job, &bo, START, END).await;
    let token = app.contractor(uuid(&ana));

    let listed = expect_json(list_assignments(&app, Some(&token), &ana, "").await, StatusCode::OK).await;
    let newest_only = expect_json(list_assignments(&app, Some(&token), &ana, "?limit=1").await, StatusCode::OK).await;

    let items = listed["items"].as_array().expect("items is an array");
    assert_eq!(items.len(), 2, "only Ana's assignments: {listed}");
    for (item, (assignment, job_id)) in items.iter().zip([(&second, &second_job), (&first, &first_job)]) {
        let mut without_job = item.clone();
        let job = without_job.as_object_mut().unwrap().remove("job").expect("each item carries its job");
        assert_eq!(&without_job, assignment, "the item is the Assignment the assign call returned, plus its job");
        assert_eq!(job["id"], job_id.as_str());
        assert_eq!(job["status"], "Assigned");
        assert_eq!(job["title"], "Kitchen floor");
    }
    assert_eq!(newest_only["items"].as_array().unwrap().len(), 1);
    assert_eq!(newest_only["items"][0]["assignmentId"], second["assignmentId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_back_office_lists_a_contractors_assignments_only_in_its_regions() {
    let app = spawn_app().await;
    let ana = app.contractor_id("north").await;
    let job = app.job_id("north").await;
    let assignment = app.assign_ok(&job, &ana, START, END).await;

    for token in [app.admin(), app.dispatcher(&["north"])] {
        let listed = expect_json(list_assignments(&app, Some(&token), &ana, "").await, StatusCode::OK).await;
        assert_eq!(listed["items"][0]["assignmentId"], assignment["assignmentId"]);
    }
    let refused = expect_problem(
        list_assignments(&app, Some(&app.dispatcher(&["south"])), &ana, "").await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(refused["detail"], "you may not read the assignments of region 'north'");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_without_assignments_gets_an_empty_list() {
    let app = spawn_app().await;
    let ana = app.contractor_id("north").await;

    let listed =
        expect_json(list_assignments(&app, Some(&app.contractor(uuid(&ana))), &ana, "").await, StatusCode::OK).await;

    assert_eq!(listed, serde_json::json!({ "items": [] }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_assignments_is_refused_with_a_problem_for_every_bad_request() {
    let app = spawn_app().await;
    let ana = app.contractor_id("north").await;
    let bo = app.contractor_id("north").await;
    let anas_token = app.contractor(uuid(&ana));

    let cases: Vec<RefusalCase> = vec![
        ("no token", None, ana.clone(), "", StatusCode::UNAUTHORIZED, "a bearer token is required"),
        (
            "another contractor's list",
            Some(anas_token.clone()),
            bo.clone(),
            "",
            StatusCode::FORBIDDEN,
            "a contractor may list only its own assignments",
        ),
        (
            "an unknown contractor",
            Some(app.admin()),
            Uuid::new_v4().to_string(),
            "",
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            "an id that is not a UUID",
            Some(app.admin()),
            "nope".into(),
            "",
            StatusCode::NOT_FOUND,
            "no contractor has this id",
        ),
        ("a zero limit", Some(anas_token.clone()), ana.clone(), "?limit=0", StatusCode::BAD_REQUEST, "limit"),
        ("a huge limit", Some(anas_token.clone()), ana.clone(), "?limit=1001", StatusCode::BAD_REQUEST, "limit"),
    ];
    for (name, token, id, query, status, detail) in cases {
        let problem = expect_problem(list_assignments(&app, token.as_deref(), &id, query).await, status).await;
        let got = problem["detail"].as_str().unwrap_or_default();
        assert!(got.contains(detail), "{name}: detail {got:?} should say {detail:?}");
    }
    let wrong_method = app
        .request(Method::POST, &format!("/api/contractors/{ana}/assignments"), Some(&app.admin()))
        .send()
        .await
        .unwrap();
    expect_problem(wrong_method, StatusCode::METHOD_NOT_ALLOWED).await;
}
