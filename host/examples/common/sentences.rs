//! Synthetic memory texts for the retrieval benchmarks (bench_seed,
//! bench_scan): subject, verb, object and time from short lists.

const SUBJECTS: &[&str] = &[
    "Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Niaj", "Olivia",
    "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter", "Yolanda",
];
const VERBS: &[&str] = &[
    "likes",
    "dislikes",
    "bought",
    "visited",
    "is learning",
    "cooked",
    "recommended",
    "lost",
    "repaired",
    "photographed",
    "painted",
    "sold",
    "borrowed",
    "reviewed",
    "planned",
];
const OBJECTS: &[&str] = &[
    "green tea",
    "a mountain bike",
    "the museum in Lisbon",
    "the piano",
    "a lemon cake",
    "a jazz record",
    "the old camera",
    "a vegetable garden",
    "a trip to Kyoto",
    "the chess club",
    "a wool sweater",
    "the kayak",
    "a sourdough starter",
    "the violin",
    "a telescope",
    "the marathon",
    "a Spanish course",
    "the bakery downtown",
    "a vintage car",
    "the library book",
];
const WHEN: &[&str] = &[
    "on Monday",
    "last summer",
    "every weekend",
    "in the morning",
    "after work",
    "during the holidays",
    "yesterday",
    "twice a month",
    "before dinner",
    "at the conference",
];

/// Deterministic so every run seeds the same corpus.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

pub fn sentence(rng: &mut Lcg) -> String {
    format!(
        "{} {} {} {}.",
        SUBJECTS[rng.next(SUBJECTS.len())],
        VERBS[rng.next(VERBS.len())],
        OBJECTS[rng.next(OBJECTS.len())],
        WHEN[rng.next(WHEN.len())]
    )
}
