//! The contractors resource over HTTP (`docs/contract.md`): create, read,
//! list, validation, and who may call (401/403), on a fresh service per test.

use std::collections::HashSet;

use crate::support::{claims, expect_json, expect_problem, id_of, is_utc_z, is_uuid, keys, spawn_app};
use reqwest::header::{CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

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
