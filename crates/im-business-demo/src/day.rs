//! The scripted day: which tenant asks what and when, whether their housekeeper answers at
//! once or is busy, and when the vendor goes down. Generated from a seed, so a run can be
//! repeated; the expected response rate follows from the script alone.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the housekeeper handles a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answered within the response time.
    Prompt,
    /// The housekeeper is busy: the tenant waits past the response time until the desk's
    /// overdue rule answers.
    Busy,
}

/// One step of the day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The clock reaches this hour (display).
    Hour(u32),
    /// A tenant (index) asks something.
    Question {
        /// Index into the tenants.
        tenant: usize,
        /// What they write.
        text: String,
        /// How it is handled.
        answer: Answer,
        /// The housekeeper first picks a wrong quick reply, recalls it and sends the right
        /// one (prompt answers only).
        slip: bool,
    },
    /// The vendor goes down; these questions are written during the outage.
    Outage {
        /// Questions written while the vendor is down (answered promptly after recovery).
        during: Vec<(usize, String)>,
    },
}

const TOPICS: &[&str] = &[
    "The kitchen tap is leaking again",
    "The radiator in the bedroom is cold",
    "I lost my door key",
    "Where can I find this month's rent invoice?",
    "When is the stairwell cleaning?",
    "The boiler makes a strange noise",
    "Water is dripping under the sink",
    "Can I pay the bill later this month?",
    "The bin room door does not lock",
    "Is there any news about my request?",
];

/// The working hours of the day.
pub const HOURS: std::ops::Range<u32> = 9..17;
/// The hour of the outage.
pub const OUTAGE_HOUR: u32 = 12;

/// A day for `tenants` tenants (at least 1) from `seed`: 1 to `tenants/2 + 1` questions an
/// hour, one in five handled by a busy housekeeper (at least one in the day), an outage at
/// noon with two questions written during it. About one prompt answer in four is a slip
/// (a wrong quick reply recalled and corrected), at least one in the day when there is a
/// prompt answer; slips are drawn from their own generator, so the rest of a seed's day is
/// the same as before slips existed.
pub fn script(tenants: usize, seed: u64) -> Vec<Step> {
    let tenants = tenants.max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut slips = StdRng::seed_from_u64(seed ^ 0x5117_5117);
    let mut steps = Vec::new();
    let mut busy_seen = false;
    let topic = |rng: &mut StdRng| TOPICS[rng.random_range(0..TOPICS.len())].to_owned();
    for hour in HOURS {
        steps.push(Step::Hour(hour));
        if hour == OUTAGE_HOUR {
            let during = (0..2)
                .map(|_| (rng.random_range(0..tenants), topic(&mut rng)))
                .collect();
            steps.push(Step::Outage { during });
            continue;
        }
        for _ in 0..rng.random_range(1..=tenants / 2 + 1) {
            let busy = rng.random_bool(0.2) || (!busy_seen && hour == HOURS.end - 1);
            busy_seen |= busy;
            steps.push(Step::Question {
                tenant: rng.random_range(0..tenants),
                text: topic(&mut rng),
                answer: if busy { Answer::Busy } else { Answer::Prompt },
                slip: !busy && slips.random_bool(0.25),
            });
        }
    }
    let slipped = steps
        .iter()
        .any(|s| matches!(s, Step::Question { slip: true, .. }));
    if !slipped
        && let Some(Step::Question { slip, .. }) = steps.iter_mut().find(|s| {
            matches!(
                s,
                Step::Question {
                    answer: Answer::Prompt,
                    ..
                }
            )
        })
    {
        *slip = true;
    }
    steps
}

/// Slips in the script: wrong quick replies the housekeepers recall.
pub fn slips(steps: &[Step]) -> u64 {
    steps
        .iter()
        .filter(|s| matches!(s, Step::Question { slip: true, .. }))
        .count() as u64
}

/// Questions in the script, and how many are answered in time.
pub fn expected(steps: &[Step]) -> (u64, u64) {
    steps.iter().fold((0, 0), |(all, prompt), s| match s {
        Step::Question { answer, .. } => (all + 1, prompt + u64::from(*answer == Answer::Prompt)),
        Step::Outage { during } => (all + during.len() as u64, prompt + during.len() as u64),
        Step::Hour(_) => (all, prompt),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_repeatable_and_has_every_kind_of_step() {
        let a = script(6, 42);
        assert_eq!(a, script(6, 42));
        assert_ne!(a, script(6, 43));
        assert!(a.iter().any(|s| matches!(s, Step::Outage { .. })));
        let busy = a
            .iter()
            .filter(|s| {
                matches!(
                    s,
                    Step::Question {
                        answer: Answer::Busy,
                        ..
                    }
                )
            })
            .count();
        assert!(busy >= 1);
        assert!(slips(&a) >= 1, "a day has a recalled reply");
        for s in &a {
            if let Step::Question {
                answer: Answer::Busy,
                slip,
                ..
            } = s
            {
                assert!(!slip, "only prompt answers slip");
            }
        }
        let (all, prompt) = expected(&a);
        assert_eq!(all - prompt, busy as u64);
        for s in &a {
            if let Step::Question { tenant, .. } = s {
                assert!(*tenant < 6);
            }
        }
    }
}
