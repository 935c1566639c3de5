//! Short attempts on a long incident: a 2 ms step on a 10-minute plot
//! would be a sliver no one sees or can name. Every attempt is drawn at
//! least [`MIN_BAR_PX`] wide; adjacent short ones in a lane are grouped,
//! and each group (or lone attempt) gets a visible label that fits.

/// The narrowest an attempt is drawn.
pub(crate) const MIN_BAR_PX: f64 = 4.0;
/// Below this natural width an attempt is short and may join a group.
const SHORT_PX: f64 = 6.0;
/// Short attempts closer than this to a group join it.
const JOIN_PX: f64 = 24.0;
/// The widest a group grows before the next short attempt starts another,
/// so a thousand attempts are not one grey block.
const MAX_GROUP_PX: f64 = 80.0;
/// The width of one character of a label, about, at 11 px.
const CHAR_PX: f64 = 6.5;

/// One attempt as the axis places it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bar {
    /// Its lane.
    pub lane: usize,
    /// Its x.
    pub x: f64,
    /// Its natural width (may be under a pixel).
    pub w: f64,
}

/// Attempts drawn together: one, or adjacent short ones in a lane.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    /// The lane.
    pub lane: usize,
    /// Indices of its attempts in the bars given, in time order.
    pub members: Vec<usize>,
    /// Where it starts.
    pub x: f64,
    /// Its width, at least [`MIN_BAR_PX`].
    pub w: f64,
    /// Room for its label: up to the next group in the lane, or `end`.
    pub room: f64,
}

/// The bars, grouped: a short bar joins the lane's last group when that
/// group is all short, within [`JOIN_PX`], and under [`MAX_GROUP_PX`].
pub(crate) fn group(bars: &[Bar], end: f64) -> Vec<Group> {
    let mut order: Vec<usize> = (0..bars.len()).collect();
    order.sort_by(|a, b| {
        let (a, b) = (&bars[*a], &bars[*b]);
        a.lane.cmp(&b.lane).then(a.x.total_cmp(&b.x))
    });
    let mut groups: Vec<Group> = Vec::new();
    for i in order {
        let bar = bars[i];
        let short = bar.w < SHORT_PX;
        match groups.last_mut() {
            Some(g) if short && joins(g, bars, bar) => {
                g.members.push(i);
                g.w = (bar.x + bar.w.max(MIN_BAR_PX) - g.x).max(g.w);
            }
            _ => groups.push(Group {
                lane: bar.lane,
                members: vec![i],
                x: bar.x,
                w: bar.w.max(MIN_BAR_PX),
                room: 0.0,
            }),
        }
    }
    set_room(&mut groups, end);
    groups
}

/// Whether a short `bar` joins group `g`.
fn joins(g: &Group, bars: &[Bar], bar: Bar) -> bool {
    g.lane == bar.lane
        && g.members.iter().all(|m| bars[*m].w < SHORT_PX)
        && bar.x - (g.x + g.w) < JOIN_PX
        && bar.x + bar.w - g.x <= MAX_GROUP_PX
}

fn set_room(groups: &mut [Group], end: f64) {
    for i in 0..groups.len() {
        let next = groups
            .get(i + 1)
            .filter(|n| n.lane == groups[i].lane)
            .map_or(end, |n| n.x);
        groups[i].room = (next - groups[i].x).max(0.0);
    }
}

/// The label of a group of `names` (its attempts' steps): the step for
/// one, `step ×n` for several of one step, `n attempts` for a mix, cut
/// to fit `room` px (down to `×n`, the least that still says how many).
pub(crate) fn label(names: &[&str], room: f64) -> Option<String> {
    let n = names.len();
    let same = names.windows(2).all(|w| w[0] == w[1]);
    let full = match (n, same) {
        (1, _) => names[0].to_string(),
        (_, true) => format!("{} ×{n}", names[0]),
        (_, false) => runbox_core::text::count(n as u64, "attempt"),
    };
    let fits = |s: &str| s.chars().count() as f64 * CHAR_PX <= room;
    if fits(&full) {
        return Some(full);
    }
    let short = if n == 1 {
        fit(names[0], room)
    } else {
        Some(format!("×{n}")).filter(|s| fits(s))
    };
    short.or_else(|| fits("·").then(|| "·".to_string()))
}

/// `name` cut with an ellipsis to fit `room`, keeping at least 2
/// characters.
fn fit(name: &str, room: f64) -> Option<String> {
    let chars = (room / CHAR_PX).floor() as usize;
    (chars >= 3).then(|| name.chars().take(chars - 1).chain(['…']).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 10-minute incident on the 960 px plot: every 10 s a burst of
    /// five 2 ms attempts, 50 ms apart, and one 30 s step.
    fn ten_minutes() -> (Vec<Bar>, f64) {
        let px = |ms: f64| ms * 960.0 / 600_000.0;
        let mut bars = Vec::new();
        for burst in 0..50 {
            for k in 0..5 {
                let t = burst as f64 * 10_000.0 + k as f64 * 50.0;
                bars.push(Bar {
                    lane: 0,
                    x: px(t),
                    w: px(2.0),
                });
            }
        }
        bars.push(Bar {
            lane: 0,
            x: px(550_000.0),
            w: px(30_000.0),
        });
        (bars, 960.0)
    }

    #[test]
    fn short_attempts_of_a_long_incident_are_grouped_wide_enough_and_labelled() {
        let (bars, end) = ten_minutes();
        let groups = group(&bars, end);
        let members: usize = groups.iter().map(|g| g.members.len()).sum();
        assert_eq!(members, bars.len(), "every attempt is in one group");
        assert!(groups.iter().all(|g| g.w >= MIN_BAR_PX), "no sliver");
        // Bursts 16 px apart join until a group is 80 px wide.
        let bursts = groups.iter().filter(|g| g.members.len() > 1).count();
        assert!((5..=15).contains(&bursts), "{bursts} groups of bursts");
        for g in &groups {
            let names = vec!["restart"; g.members.len()];
            let l = label(&names, g.room);
            assert!(
                l.is_some(),
                "a group of {} in {} px has no label",
                g.members.len(),
                g.room
            );
        }
        let long = groups.last().unwrap();
        assert_eq!(long.members, [250], "the long step stands alone");
        assert!(long.w > 40.0);
    }

    #[test]
    fn lanes_never_share_a_group() {
        let bars = [
            Bar {
                lane: 0,
                x: 10.0,
                w: 1.0,
            },
            Bar {
                lane: 1,
                x: 11.0,
                w: 1.0,
            },
            Bar {
                lane: 0,
                x: 12.0,
                w: 1.0,
            },
        ];
        let groups = group(&bars, 960.0);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].members, [0, 2]);
        assert_eq!(groups[1].members, [1]);
        assert_eq!(groups[0].room, 950.0, "to the end of its own lane");
    }

    #[test]
    fn labels_fit_their_room() {
        assert_eq!(label(&["restart"], 200.0).as_deref(), Some("restart"));
        assert_eq!(label(&["restart"; 3], 200.0).as_deref(), Some("restart ×3"));
        assert_eq!(label(&["a", "b"], 200.0).as_deref(), Some("2 attempts"));
        assert_eq!(label(&["restart"], 26.0).as_deref(), Some("res…"));
        assert_eq!(label(&["restart"; 12], 26.0).as_deref(), Some("×12"));
        assert_eq!(label(&["restart"], 7.0).as_deref(), Some("·"));
        assert_eq!(label(&["restart"], 2.0), None);
    }
}
