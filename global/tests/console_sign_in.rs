//! The federation console's sign-in on a real replica with authentication
//! on, over a real HTTP socket: its pages send a browser without a session
//! to the sign-in page, a bearer header no longer opens them, a viewer
//! token is refused at sign-in (the pages show every tenant: admin only),
//! and an admin token opens a session whose cookie carries no token and
//! which may read the API but change nothing through it. (A
//! revoked token ending its session at the next check is shown on a manual
//! clock in the console crate's `sign_in` tests.)

use crate::access_support;

use std::net::SocketAddr;

use access_support::{Answer, Secured, send};
use meridian_proto::v1::Role;

async fn sign_in(addr: SocketAddr, token: &str) -> Answer {
    send(
        addr,
        "POST",
        "/console/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={token}&next=%2Fconsole%2Fschedules"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_signs_in_to_the_federation_console_and_its_cookie_carries_no_token() {
    let secured = Secured::start(|_| {}).await;
    let addr = secured.http_addr();

    let page = send(addr, "GET", "/console", &[("Accept", "text/html")], "").await;
    assert_eq!(page.status, 303, "{}", page.head);
    assert_eq!(
        page.header("location").as_deref(),
        Some("/console/login?next=%2Fconsole")
    );
    // A bearer header is the API's way in, not the console's.
    let bearer = format!("Bearer {}", secured.admin);
    let page = send(
        addr,
        "GET",
        "/console/api/overview",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(page.status, 401, "{}", page.body);

    let (viewer, _) = secured.token("watcher", Role::Viewer, &["a"]).await;
    let refused = sign_in(addr, &viewer).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("role admin required"),
        "{}",
        refused.body
    );
    assert!(refused.header("set-cookie").is_none());

    let (admin, _) = secured.token("second-admin", Role::Admin, &[]).await;
    let opened = sign_in(addr, &admin).await;
    assert_eq!(opened.status, 303, "{}", opened.body);
    assert_eq!(
        opened.header("location").as_deref(),
        Some("/console/schedules")
    );
    let set = opened.header("set-cookie").expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(&admin), "no token in the cookie");
    let cookie = set.split(';').next().unwrap().to_string();
    let page = send(addr, "GET", "/console", &[("Cookie", &cookie)], "").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("second-admin"), "who is signed in");

    // The session reads the API (the job page's live output does), as the
    // person signed in; it changes nothing there.
    let read = send(addr, "GET", "/v1/jobs", &[("Cookie", &cookie)], "").await;
    assert_eq!(read.status, 200, "{}", read.body);
    let write = send(
        addr,
        "POST",
        "/v1/regions/r1/drain",
        &[("Cookie", &cookie), ("Content-Type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(write.status, 401, "{}", write.body);
}
