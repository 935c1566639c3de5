//! The timeline chart of a postmortem: inline SVG on a time axis, one lane
//! for the agent, one per human, one for the system. Each attempt is a bar
//! coloured by its outcome; approvals and denials are marks with their wait
//! shaded; cooldowns and backoff are shaded; takeovers, escalations and
//! handbacks are lines from the old owner's lane to the new one's.
//!
//! Every string in it goes through maud, which escapes it: a step called
//! `<script>` is drawn as text.

mod clusters;
mod ticks;

use maud::{Markup, html};
use runbox_core::inert::inert;

use runbox_core::event::EventKind;
use runbox_core::records::RecordOutcome;
use runbox_core::text::count;

use crate::figures::WaitEnd;
use crate::postmortem::{Postmortem, StepView};
use crate::stamp::span;

/// Width of the lane labels.
const LABEL_W: f64 = 150.0;
/// Room right of the plot for the last tick's label.
const RIGHT_PAD: f64 = 40.0;
/// Height of one lane: a bar, and its label under it.
const LANE_H: f64 = 44.0;
/// Where an attempt's bar starts in its lane, and how tall it is.
const BAR_Y: f64 = 6.0;
const BAR_H: f64 = 18.0;
/// The baseline of an attempt's label in its lane.
const BAR_LABEL_Y: f64 = 37.0;
/// Height of the time axis under the lanes.
const AXIS_H: f64 = 30.0;
/// The plot's width up to this many attempts; beyond, it widens (and
/// scrolls), and an overview strip shows the whole incident at once.
const DENSE: usize = 160;
/// Width of the plot, and of the overview strip.
const PLOT_W: f64 = 960.0;
/// The widest plot, however many attempts.
const MAX_PLOT_W: f64 = 24_000.0;
/// Buckets of the overview strip.
const BUCKETS: usize = 240;

/// The lanes: the agent first, then each human in order of appearance,
/// then the system.
struct Lanes {
    names: Vec<String>,
}

impl Lanes {
    fn of(p: &Postmortem) -> Self {
        let mut names = vec!["agent".to_string()];
        let humans = p
            .owner_changes
            .iter()
            .flat_map(|c| [c.by.as_str(), c.to.as_str()])
            .chain(p.decisions.iter().map(|d| d.by.as_str()))
            .chain(p.steps.iter().map(|s| s.actor.as_str()))
            .chain(p.approval_waits.iter().filter_map(|w| w.by.as_deref()))
            .filter(|a| a.starts_with("human:"));
        for h in humans {
            if !names.iter().any(|n| n == h) {
                names.push(h.to_string());
            }
        }
        names.push("system".to_string());
        Lanes { names }
    }

    /// The lane of an actor (`agent:*`, `human:NAME`, anything else).
    fn of_actor(&self, actor: &str) -> usize {
        if actor.starts_with("agent:") {
            return 0;
        }
        self.names
            .iter()
            .position(|n| n == actor)
            .unwrap_or(self.names.len() - 1)
    }

    fn system(&self) -> usize {
        self.names.len() - 1
    }
}

/// Maps times to x positions.
struct Axis {
    t0: u64,
    span: u64,
    width: f64,
}

impl Axis {
    fn x(&self, t: u64) -> f64 {
        LABEL_W + t.saturating_sub(self.t0) as f64 * self.width / self.span as f64
    }

    /// The x and width of `[from, to]`, at least `min` wide.
    fn bar(&self, from: u64, to: u64, min: f64) -> (f64, f64) {
        let x = self.x(from);
        (x, (self.x(to) - x).max(min))
    }
}

fn lane_y(lane: usize) -> f64 {
    lane as f64 * LANE_H
}

/// The end of the chart: the last thing that happened.
fn end_ms(p: &Postmortem) -> u64 {
    let f = &p.figures;
    let last_event = p.timeline.last().map_or(f.opened_ms, |e| e.at_ms);
    let last_step = p.steps.iter().map(|s| s.ended_ms).max().unwrap_or(0);
    last_event.max(last_step).max(f.opened_ms + f.span_ms)
}

/// The chart, and an overview strip when the incident has many attempts.
pub(crate) fn timeline(p: &Postmortem) -> Markup {
    let lanes = Lanes::of(p);
    let t0 = p.figures.opened_ms;
    let width = if p.steps.len() > DENSE {
        (p.steps.len() as f64 * 6.0).min(MAX_PLOT_W)
    } else {
        PLOT_W
    };
    let axis = Axis {
        t0,
        span: end_ms(p).saturating_sub(t0).max(1),
        width,
    };
    let height = lanes.names.len() as f64 * LANE_H + AXIS_H;
    html! {
        @if p.steps.len() > DENSE { (overview(p, &axis)) }
        div.chart-scroll role="region" aria-label="Timeline chart" tabindex="0" {
            svg.chart xmlns="http://www.w3.org/2000/svg" role="img"
                width=(LABEL_W + width + RIGHT_PAD) height=(height)
                viewBox=(format!("0 0 {} {height}", LABEL_W + width + RIGHT_PAD)) {
                title { "Timeline of incident " (p.incident.id) }
                (lane_rows(&lanes, &axis))
                (ownership(p, &lanes, &axis))
                (holds(p, &lanes, &axis))
                (waits(p, &lanes, &axis))
                (attempts(p, &lanes, &axis))
                (marks(p, &lanes, &axis))
                (ticks(&axis, lanes.names.len()))
            }
        }
    }
}

fn lane_rows(lanes: &Lanes, axis: &Axis) -> Markup {
    html! {
        @for (i, name) in lanes.names.iter().enumerate() {
            g.lane data-lane=(name) {
                rect.lane-bg x="0" y=(lane_y(i)) width=(LABEL_W + axis.width + RIGHT_PAD) height=(LANE_H) {}
                text.lane-label x="6" y=(lane_y(i) + LANE_H / 2.0 + 4.0) { (name) }
            }
        }
    }
}

/// Who owned the incident when: a tint in the owner's lane, and a line
/// from the old owner's lane to the new one's at each change.
fn ownership(p: &Postmortem, lanes: &Lanes, axis: &Axis) -> Markup {
    let end = axis.t0 + axis.span;
    let mut spans = Vec::new();
    let (mut owner, mut since) = ("agent:runbox", axis.t0);
    for c in &p.owner_changes {
        spans.push((owner, since, c.at_ms));
        (owner, since) = (c.to.as_str(), c.at_ms);
    }
    spans.push((owner, since, end));
    html! {
        @for (who, from, to) in &spans {
            @let (x, w) = axis.bar(*from, *to, 0.0);
            rect.owned x=(x) y=(lane_y(lanes.of_actor(who)) + 2.0) width=(w) height=(LANE_H - 4.0) {
                title { "owned by " (who) " for " (span(to - from)) }
            }
        }
        @for c in &p.owner_changes {
            @let x = axis.x(c.at_ms);
            @let (a, b) = (lanes.of_actor(&c.from), lanes.of_actor(&c.to));
            line.handoff data-kind=(c.kind.as_str()) x1=(x) x2=(x)
                y1=(lane_y(a) + LANE_H / 2.0) y2=(lane_y(b) + LANE_H / 2.0) {
                title { (c.kind.as_str()) ": " (c.from) " → " (c.to) " by " (c.by) }
            }
        }
    }
}

fn holds(p: &Postmortem, lanes: &Lanes, axis: &Axis) -> Markup {
    let y = lane_y(lanes.system()) + 6.0;
    html! {
        @for h in &p.holds {
            @let (x, w) = axis.bar(h.from_ms, h.to_ms, 1.0);
            @let kind = h.kind.as_str();
            rect class={ "hold " (kind) } x=(x) y=(y) width=(w) height=(LANE_H - 12.0) {
                title { (kind) " of " (h.step) " for " (span(h.to_ms - h.from_ms)) }
            }
        }
    }
}

fn waits(p: &Postmortem, lanes: &Lanes, axis: &Axis) -> Markup {
    html! {
        @for w in &p.approval_waits {
            @let lane = match (&w.by, w.end) {
                (Some(by), end) if end != WaitEnd::Pending => lanes.of_actor(by),
                _ => lanes.system(),
            };
            @let (x, width) = axis.bar(w.from_ms, w.to_ms, 1.0);
            rect.wait x=(x) y=(lane_y(lane) + 4.0) width=(width) height=(LANE_H - 8.0) {
                title { "waited " (span(w.to_ms - w.from_ms)) " for approval of " (w.step) "#" (w.attempt) }
            }
        }
    }
}

/// The CSS class that colours an outcome.
pub(crate) fn outcome_class(o: RecordOutcome) -> String {
    format!("outcome-{}", o.as_str())
}

/// One bar per attempt, at least [`clusters::MIN_BAR_PX`] wide, and a
/// label under each group of them (adjacent short attempts together,
/// outlined, with a title saying what is in it).
fn attempts(p: &Postmortem, lanes: &Lanes, axis: &Axis) -> Markup {
    let bars: Vec<clusters::Bar> = p
        .steps
        .iter()
        .map(|s| {
            let (x, w) = axis.bar(s.started_ms, s.ended_ms, 0.0);
            clusters::Bar {
                lane: lanes.of_actor(&s.actor),
                x,
                w,
            }
        })
        .collect();
    let groups = clusters::group(&bars, LABEL_W + axis.width + RIGHT_PAD);
    html! {
        @for (s, bar) in p.steps.iter().zip(&bars) {
            rect class={ "attempt " (outcome_class(s.outcome)) }
                data-step=(s.step) data-attempt=(s.attempt)
                x=(bar.x) y=(lane_y(bar.lane) + BAR_Y) width=(bar.w.max(clusters::MIN_BAR_PX)) height=(BAR_H) {
                title { (s.step) "#" (s.attempt) " " (s.outcome.as_str()) " in " (span(s.duration_ms)) }
            }
        }
        @for g in &groups { (group_label(p, g, axis)) }
    }
}

/// A group's outline (when it holds several attempts) and its label.
fn group_label(p: &Postmortem, g: &clusters::Group, axis: &Axis) -> Markup {
    let members: Vec<&StepView> = g.members.iter().map(|i| &p.steps[*i]).collect();
    let names: Vec<&str> = members.iter().map(|s| s.step.as_str()).collect();
    let y = lane_y(g.lane);
    html! {
        @if members.len() > 1 {
            rect.attempt-group x=(g.x - 1.0) y=(y + BAR_Y - 2.0) width=(g.w + 2.0) height=(BAR_H + 4.0) {
                title { (group_title(&members, axis)) }
            }
        }
        @if let Some(label) = clusters::label(&names, g.room) {
            text.attempt-label x=(g.x) y=(y + BAR_LABEL_Y) { (label) }
        }
    }
}

/// What a group holds: how many attempts, their outcomes, when.
fn group_title(members: &[&StepView], axis: &Axis) -> String {
    let mut outcomes = std::collections::BTreeMap::new();
    for s in members {
        *outcomes.entry(s.outcome.as_str()).or_insert(0u32) += 1;
    }
    let from = members
        .iter()
        .map(|s| s.started_ms)
        .min()
        .unwrap_or(axis.t0);
    let to = members.iter().map(|s| s.ended_ms).max().unwrap_or(from);
    format!(
        "{} ({}) from {} to {}",
        count(members.len() as u64, "attempt"),
        crate::patterns::mix(&outcomes),
        ticks::label(from.saturating_sub(axis.t0)),
        ticks::label(to.saturating_sub(axis.t0)),
    )
}

/// A diamond centred on (x, y).
fn diamond(x: f64, y: f64) -> String {
    format!("M{x:.1} {:.1}l6 6l-6 6l-6 -6z", y - 6.0)
}

/// Human decisions in their lane; escalations, blocks and approval
/// requests in the system's.
fn marks(p: &Postmortem, lanes: &Lanes, axis: &Axis) -> Markup {
    let system = p.timeline.iter().filter(|e| {
        matches!(
            e.kind,
            EventKind::Escalated | EventKind::ApprovalRequired | EventKind::Blocked
        )
    });
    html! {
        @for d in &p.decisions {
            @let y = lane_y(lanes.of_actor(&d.by)) + LANE_H / 2.0;
            path class={ "mark " (d.kind.as_str()) } d=(diamond(axis.x(d.at_ms), y)) {
                title { (d.kind.as_str()) " by " (d.by) @if let Some(s) = &d.step { " on " (s) } }
            }
        }
        @for e in system {
            @let y = lane_y(lanes.system()) + LANE_H / 2.0;
            path class={ "mark " (e.kind.as_str()) } d=(diamond(axis.x(e.at_ms), y)) {
                title { (e.kind.as_str()) ": " (inert(&e.message)) }
            }
        }
    }
}

/// Ticks at round intervals of the span (see [`ticks::interval`]).
fn ticks(axis: &Axis, lanes: usize) -> Markup {
    let y = lanes as f64 * LANE_H;
    html! {
        @for t in ticks::ticks(axis.span, axis.width) {
            @let x = axis.x(axis.t0 + t);
            line.tick x1=(x) x2=(x) y1="0" y2=(y + 4.0) {}
            text.tick-label x=(x) y=(y + 18.0) { (ticks::label(t)) }
        }
    }
}

/// Attempts per stretch of time, stacked by outcome: the whole incident at
/// a glance when the chart itself is too wide to see at once.
fn overview(p: &Postmortem, axis: &Axis) -> Markup {
    const H: f64 = 60.0;
    let outcomes = RecordOutcome::ALL;
    let mut counts = vec![[0u32; RecordOutcome::ALL.len()]; BUCKETS];
    for s in &p.steps {
        let at = s.started_ms.saturating_sub(axis.t0);
        let b = ((at as u128 * BUCKETS as u128) / (axis.span as u128 + 1)) as usize;
        let o = outcomes.iter().position(|o| *o == s.outcome).unwrap_or(0);
        counts[b.min(BUCKETS - 1)][o] += 1;
    }
    let most = counts
        .iter()
        .map(|c| c.iter().sum::<u32>())
        .max()
        .unwrap_or(1)
        .max(1);
    let bw = PLOT_W / BUCKETS as f64;
    let mut bars = Vec::new();
    for (b, c) in counts.iter().enumerate() {
        let mut top = H;
        for (o, n) in c.iter().enumerate().filter(|(_, n)| **n > 0) {
            let h = f64::from(*n) * H / f64::from(most);
            top -= h;
            bars.push((b as f64 * bw, top, h, outcomes[o], *n));
        }
    }
    html! {
        svg.overview xmlns="http://www.w3.org/2000/svg" role="img"
            width=(PLOT_W) height=(H) viewBox=(format!("0 0 {PLOT_W} {H}")) {
            title { "Overview: attempts over time, by outcome" }
            @for (x, y, h, outcome, n) in bars {
                rect class={ "bucket " (outcome_class(outcome)) } x=(x) y=(y) width=(bw) height=(h) {
                    title { (n) " " (outcome.as_str()) }
                }
            }
        }
    }
}
