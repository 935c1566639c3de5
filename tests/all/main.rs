//! runbox's integration tests, one binary: each module is one area.

mod agent_api;
// Alerts in: Alertmanager's webhooks (a real Alertmanager, and payloads
// posted directly) routed to incidents by routes.toml.
mod alerts;
mod architecture;
mod authoring;
mod clocks;
mod compat;
mod components;
mod concurrency;
mod console;
mod crash_campaign;
mod decisions;
mod dry_run;
mod engine;
mod examples;
mod exec_cli;
mod faults;
mod fleet;
mod fleet_config;
mod front_door;
mod fuzz_smoke;
mod ha;
mod human_view;
mod notify;
// The HTTP API's OpenAPI document, generated, served and kept.
mod openapi;
mod operations;
mod partition;
mod postmortem;
mod postmortem_a11y;
mod replay;
mod review;
mod sandbox;
mod scaffolds;
mod store_etcd;
// OpenTelemetry traces over OTLP/HTTP to a receiver on loopback.
mod traces;
mod util;
mod verify;
