//! meridian-console: the operator consoles of Meridian.
//!
//! Owns the web console framework both tiers serve: an axum [`Router`]
//! factory per console ([`region_router`] for `meridian regional`,
//! [`federation_router`] for `meridian global`), server-rendered HTML, one
//! small hand-written script and one stylesheet embedded in the binary, live
//! updates by server-sent events (the server re-renders the page's sections
//! and the script swaps them in), charts as server-rendered inline SVG, and
//! operator actions behind a confirmation step.
//!
//! A tier supplies its data by implementing [`RegionConsoleSource`] or
//! [`FederationConsoleSource`], which return the view structs of [`view`].
//! Must never: import a tier crate (`meridian-global`, `meridian-regional`:
//! tiers implement the traits, the console only renders), implement an
//! operator action itself (actions are the source's, through the same code
//! as the API and the CLI), or load anything from outside the binary at run
//! time.
//!
//! [`Router`]: axum::Router

mod assets;
mod csrf;
mod dependencies;
pub mod error;
mod federation;
mod job_tasks;
mod output;
mod region;
mod render;
mod schedules;
pub mod session;
pub mod source;
mod timeline;
mod usage;
mod usage_chart;
pub mod view;

pub use error::ConsoleError;
pub use federation::federation_router;
pub use region::region_router;
pub use session::{Actor, ConsoleRole, Gate, SignedIn, TokenCheck, Viewer};
pub use source::{FederationConsoleSource, RegionConsoleSource};

/// Path prefix every console page and endpoint lives under.
pub const CONSOLE_PATH: &str = "/console";

/// Wall time in ms, for "in 3m" and "5s ago" beside the times shown.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
