//! A tiny English-like language whose sentences carry an explicit meaning.
//!
//! Every sentence is generated *from* a meaning ([`Clause`], [`Sentence`]) and realised as text in
//! one of several surface forms ([`Style`]: active or passive voice, synonyms, "not" or "never",
//! intensifiers, "is" or "seems", clause order). Because the meaning is known, task labels
//! (sentiment, entailment, paraphrase, similarity) are computed exactly rather than annotated, and
//! paraphrases are two surface forms of one meaning.
//!
//! The semantics are deliberately two-valued: every predicate family has a positive pole and, for
//! most families, an antonym pole, and "not P" means the other pole ("anna is not happy" =
//! "anna is sad"; "anna does not hate the ball" = "anna likes the ball"). This keeps every label
//! decidable from meanings alone. Words are lower case and punctuation is a separate token
//! (`.` and `?`), so a word-level tokenizer over [`vocabulary`] covers all text.

use crate::rng::Rng;

/// People: subjects of any clause, never modified by a colour.
const NAMES: &[&str] = &[
    "anna", "ben", "clara", "david", "emma", "felix", "grace", "henry", "iris", "jack", "kate",
    "leo", "maya", "nora", "oscar", "paul", "rosa", "sam", "tom", "uma", "victor", "wendy", "yara",
    "zoe", "alice", "bruno", "carla", "dan", "eva", "finn",
];
const ANIMALS: &[&str] = &[
    "cat", "dog", "horse", "rabbit", "fox", "bird", "mouse", "goat", "sheep", "cow", "duck", "owl",
    "wolf", "bear", "frog", "lion", "tiger", "pig", "deer", "hen",
];
const OBJECTS: &[&str] = &[
    "ball", "book", "lamp", "chair", "table", "cup", "hat", "coat", "bag", "box", "kite", "clock",
    "bike", "boat", "key", "map", "drum", "piano", "bottle", "basket", "blanket", "candle",
    "mirror", "pencil",
];
const PLACES: &[&str] = &[
    "park", "market", "school", "garden", "river", "forest", "beach", "village", "library",
    "station", "museum", "castle", "farm", "harbor", "bridge", "church",
];
/// Neutral modifiers of non-name entities ("the red ball"): they make objects more specific,
/// which gives entailment ("likes the red ball" ⊨ "likes the ball") something to drop.
const COLOURS: &[&str] = &[
    "red", "blue", "green", "yellow", "black", "white", "brown", "grey", "purple", "orange",
];

/// A predicate family: whether it carries sentiment, and its poles, each with two synonyms.
/// Verbs are written "base third-person participle".
struct Family {
    affective: bool,
    poles: &'static [[&'static str; 2]],
}

#[rustfmt::skip]
const VERBS: &[Family] = &[
    Family { affective: true, poles: &[["like likes liked", "enjoy enjoys enjoyed"], ["hate hates hated", "dislike dislikes disliked"]] },
    Family { affective: true, poles: &[["admire admires admired", "respect respects respected"], ["despise despises despised", "scorn scorns scorned"]] },
    Family { affective: true, poles: &[["help helps helped", "assist assists assisted"], ["hurt hurts hurt", "harm harms harmed"]] },
    Family { affective: true, poles: &[["praise praises praised", "applaud applauds applauded"], ["blame blames blamed", "criticize criticizes criticized"]] },
    Family { affective: false, poles: &[["see sees seen", "notice notices noticed"]] },
    Family { affective: false, poles: &[["watch watches watched", "observe observes observed"]] },
    Family { affective: false, poles: &[["remember remembers remembered", "recall recalls recalled"]] },
    Family { affective: false, poles: &[["find finds found", "discover discovers discovered"]] },
    Family { affective: false, poles: &[["mention mentions mentioned", "describe describes described"]] },
];

#[rustfmt::skip]
const ADJECTIVES: &[Family] = &[
    Family { affective: true, poles: &[["happy", "glad"], ["sad", "unhappy"]] },
    Family { affective: true, poles: &[["good", "fine"], ["bad", "poor"]] },
    Family { affective: true, poles: &[["wonderful", "great"], ["awful", "terrible"]] },
    Family { affective: true, poles: &[["kind", "gentle"], ["cruel", "mean"]] },
    Family { affective: true, poles: &[["beautiful", "lovely"], ["ugly", "hideous"]] },
    Family { affective: true, poles: &[["calm", "peaceful"], ["angry", "furious"]] },
    Family { affective: true, poles: &[["clean", "tidy"], ["dirty", "messy"]] },
    Family { affective: true, poles: &[["brave", "bold"], ["timid", "cowardly"]] },
    Family { affective: true, poles: &[["clever", "smart"], ["foolish", "stupid"]] },
    Family { affective: true, poles: &[["friendly", "warm"], ["rude", "hostile"]] },
    Family { affective: false, poles: &[["big", "large"], ["small", "little"]] },
    Family { affective: false, poles: &[["loud", "noisy"], ["quiet", "silent"]] },
    Family { affective: false, poles: &[["fast", "quick"], ["slow", "sluggish"]] },
    Family { affective: false, poles: &[["old", "ancient"], ["young", "new"]] },
];

const NEGATORS: [&str; 2] = ["not", "never"];
const VERB_INTENSIFIERS: [&str; 2] = ["really", "truly"];
const ADJ_INTENSIFIERS: [&str; 3] = ["very", "extremely", "really"];
const FUNCTION_WORDS: &[&str] = &[
    "the", "is", "does", "seem", "seems", "by", "and", "but", "it", "true", "that", ".", "?",
];

/// Number of entities (names, animals, objects, places, in that order).
pub const NUM_ENTITIES: usize = NAMES.len() + ANIMALS.len() + OBJECTS.len() + PLACES.len();
/// Entities that can act (subjects of verb clauses): names and animals.
const NUM_AGENTS: usize = NAMES.len() + ANIMALS.len();

/// An entity by index: names, then animals, objects and places.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entity(pub u16);

impl Entity {
    /// Its noun phrase: a bare name ("anna") or "the" + optional colour + noun ("the red ball").
    pub fn phrase(self, colour: Option<u8>) -> String {
        let i = self.0 as usize;
        if i < NAMES.len() {
            return NAMES[i].to_string();
        }
        let noun = [ANIMALS, OBJECTS, PLACES]
            .concat()
            .get(i - NAMES.len())
            .copied()
            .expect("entity index out of range");
        match colour {
            Some(c) => format!("the {} {noun}", COLOURS[c as usize]),
            None => format!("the {noun}"),
        }
    }

    /// Whether it can be the agent of a verb (names and animals).
    pub fn is_agent(self) -> bool {
        (self.0 as usize) < NUM_AGENTS
    }

    /// Whether it is a name (names take no colour).
    pub fn is_name(self) -> bool {
        (self.0 as usize) < NAMES.len()
    }
}

/// What is said of the subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Predicate {
    /// `subject VERB object`, the object optionally coloured.
    Verb {
        family: u8,
        object: Entity,
        colour: Option<u8>,
    },
    /// `subject is ADJECTIVE`.
    Adjective { family: u8 },
}

impl Predicate {
    fn family(&self) -> &'static Family {
        match *self {
            Predicate::Verb { family, .. } => &VERBS[family as usize],
            Predicate::Adjective { family } => &ADJECTIVES[family as usize],
        }
    }
}

/// The meaning of one clause. `positive` picks the family's pole (always true for families with
/// one pole); the clause asserts the positive pole iff `positive != negated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Clause {
    pub subject: Entity,
    pub predicate: Predicate,
    pub positive: bool,
    pub negated: bool,
    /// "really likes", "very happy". Never together with `negated` ("not very happy" would be
    /// neither pole, which the two-valued semantics cannot express).
    pub intense: bool,
}

/// What a clause is about, regardless of polarity, intensity and colour: two clauses with the
/// same topic agree or contradict; different topics are unrelated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Verb(Entity, u8, Entity),
    Adjective(Entity, u8),
}

/// How a meaning is put into words; every style of a meaning is a paraphrase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Style {
    /// Verb clauses: passive voice ("the ball is liked by anna"). Adjective clauses: "seems"
    /// instead of "is".
    pub passive: bool,
    /// Which of the two synonyms of the pole.
    pub synonym: u8,
    /// 0: "not", 1: "never".
    pub negator: u8,
    /// Which intensifier ("really"/"truly" for verbs, "very"/"extremely"/"really" for adjectives).
    pub intensifier: u8,
    /// Questions only: "is it true that …?" instead of inversion.
    pub framed: bool,
}

impl Style {
    pub fn random(rng: &mut Rng) -> Style {
        Style {
            passive: rng.below(2) == 1,
            synonym: rng.below(2) as u8,
            negator: rng.below(2) as u8,
            intensifier: rng.below(3) as u8,
            framed: rng.below(4) == 0,
        }
    }
}

/// The probability that a random clause is negated: common enough that sentiment cannot be read
/// off the polar word alone.
const P_NEGATED: f64 = 0.35;
const P_INTENSE: f64 = 0.25;
const P_COLOUR: f64 = 0.3;

/// A uniformly random entity in `[0, n)`.
fn entity_below(rng: &mut Rng, n: usize) -> Entity {
    Entity(rng.below(n as u64) as u16)
}

impl Clause {
    /// A random clause; `affective` restricts it to families with (`Some(true)`) or without
    /// (`Some(false)`) sentiment.
    pub fn random(rng: &mut Rng, affective: Option<bool>) -> Clause {
        loop {
            let verb = rng.below(2) == 0;
            let n = if verb { VERBS.len() } else { ADJECTIVES.len() };
            let family = rng.below(n as u64) as u8;
            let subject = entity_below(rng, if verb { NUM_AGENTS } else { NUM_ENTITIES });
            let predicate = if verb {
                Predicate::Verb {
                    family,
                    object: entity_below(rng, NUM_ENTITIES),
                    colour: None,
                }
            } else {
                Predicate::Adjective { family }
            };
            if affective.is_some_and(|a| a != predicate.family().affective) {
                continue;
            }
            if let Predicate::Verb { object, .. } = predicate
                && object == subject
            {
                continue;
            }
            let mut c = Clause {
                subject,
                predicate,
                positive: true,
                negated: rng.next_f64() < P_NEGATED,
                intense: false,
            };
            c.positive = c.predicate.family().poles.len() == 1 || rng.below(2) == 0;
            c.intense = !c.negated && rng.next_f64() < P_INTENSE;
            c.recolour(rng);
            return c;
        }
    }

    /// Gives a non-name object a random colour with probability [`P_COLOUR`], or none.
    pub fn recolour(&mut self, rng: &mut Rng) {
        if let Predicate::Verb { object, colour, .. } = &mut self.predicate {
            let coloured = !object.is_name() && rng.next_f64() < P_COLOUR;
            *colour = coloured.then(|| rng.below(COLOURS.len() as u64) as u8);
        }
    }

    pub fn topic(&self) -> Topic {
        match self.predicate {
            Predicate::Verb { family, object, .. } => Topic::Verb(self.subject, family, object),
            Predicate::Adjective { family } => Topic::Adjective(self.subject, family),
        }
    }

    /// Whether the clause asserts its family's positive pole (the two-valued reading).
    pub fn truth(&self) -> bool {
        self.positive != self.negated
    }

    /// Whether the family carries sentiment.
    pub fn affective(&self) -> bool {
        self.predicate.family().affective
    }

    /// Whether the family has an antonym pole.
    pub fn has_antonym(&self) -> bool {
        self.predicate.family().poles.len() == 2
    }

    /// Sentiment: ±1 for affective clauses (±2 when intense), sign flipped by negation; 0 for
    /// neutral families.
    pub fn sentiment(&self) -> i32 {
        if !self.affective() {
            return 0;
        }
        let sign = if self.truth() { 1 } else { -1 };
        sign * if self.intense { 2 } else { 1 }
    }

    /// The same meaning with the opposite negation and the opposite pole ("likes" ↔ "does not
    /// hate"): a paraphrase under the two-valued semantics. `None` for one-pole families, or when
    /// the result would be negated and intense.
    pub fn dual(&self) -> Option<Clause> {
        if !self.has_antonym() || self.intense {
            return None;
        }
        Some(Clause {
            positive: !self.positive,
            negated: !self.negated,
            ..*self
        })
    }

    fn words(&self, style: Style) -> (String, &'static str, String) {
        let family = self.predicate.family();
        let pole = if self.positive { 0 } else { 1 };
        let word = family.poles[pole][style.synonym as usize % 2];
        let intensifier = match self.predicate {
            Predicate::Verb { .. } => VERB_INTENSIFIERS[style.intensifier as usize % 2],
            Predicate::Adjective { .. } => ADJ_INTENSIFIERS[style.intensifier as usize % 3],
        };
        let object = match self.predicate {
            Predicate::Verb { object, colour, .. } => object.phrase(colour),
            Predicate::Adjective { .. } => String::new(),
        };
        (object, word, intensifier.to_string())
    }

    /// The clause as a declarative (no final punctuation).
    pub fn realise(&self, style: Style) -> String {
        let subject = self.subject.phrase(None);
        let (object, word, intensifier) = self.words(style);
        let negator = NEGATORS[style.negator as usize % 2];
        let never = style.negator % 2 == 1;
        let intense = |w: &str| {
            if self.intense {
                format!("{intensifier} {w}")
            } else {
                w.to_string()
            }
        };
        match self.predicate {
            Predicate::Verb { .. } => {
                let [base, third, participle] = verb_forms(word);
                if style.passive {
                    let neg = if self.negated {
                        format!("{negator} ")
                    } else {
                        String::new()
                    };
                    format!("{object} is {neg}{} by {subject}", intense(participle))
                } else if !self.negated {
                    format!("{subject} {} {object}", intense(third))
                } else if never {
                    format!("{subject} never {third} {object}")
                } else {
                    format!("{subject} does not {base} {object}")
                }
            }
            Predicate::Adjective { .. } => {
                let adjective = intense(word);
                match (style.passive, self.negated) {
                    (false, false) => format!("{subject} is {adjective}"),
                    (false, true) => format!("{subject} is {negator} {adjective}"),
                    (true, false) => format!("{subject} seems {adjective}"),
                    (true, true) if never => format!("{subject} never seems {adjective}"),
                    (true, true) => format!("{subject} does not seem {adjective}"),
                }
            }
        }
    }

    /// The clause as a yes/no question, ending in " ?".
    pub fn question(&self, style: Style) -> String {
        if style.framed {
            return format!("is it true that {} ?", self.realise(style));
        }
        let subject = self.subject.phrase(None);
        let (object, word, intensifier) = self.words(style);
        let mut middle = String::new();
        if self.negated {
            middle.push_str(NEGATORS[style.negator as usize % 2]);
            middle.push(' ');
        }
        if self.intense {
            middle.push_str(&intensifier);
            middle.push(' ');
        }
        match self.predicate {
            Predicate::Verb { .. } => {
                let [base, _, participle] = verb_forms(word);
                if style.passive {
                    format!("is {object} {middle}{participle} by {subject} ?")
                } else {
                    // "does anna really like the ball ?", "does anna not like the ball ?"
                    format!("does {subject} {middle}{base} {object} ?")
                }
            }
            Predicate::Adjective { .. } => {
                if style.passive {
                    let neg = if self.negated {
                        format!("{} ", NEGATORS[style.negator as usize % 2])
                    } else {
                        String::new()
                    };
                    let int = if self.intense {
                        format!("{intensifier} ")
                    } else {
                        String::new()
                    };
                    format!("does {subject} {neg}seem {int}{word} ?")
                } else {
                    format!("is {subject} {middle}{word} ?")
                }
            }
        }
    }
}

fn verb_forms(word: &'static str) -> [&'static str; 3] {
    let mut it = word.split(' ');
    let mut next = || it.next().expect("verb entries have three forms");
    [next(), next(), next()]
}

/// How two clauses are joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Conj {
    And,
    /// Contrast: the sentiment of the sentence is that of the clause after "but", as in English
    /// reviews ("the plot is bad but the actors are wonderful").
    But,
}

/// One or two clauses: a declarative sentence.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sentence {
    pub clauses: Vec<Clause>,
    pub conj: Conj,
}

impl Sentence {
    pub fn single(c: Clause) -> Sentence {
        Sentence {
            clauses: vec![c],
            conj: Conj::And,
        }
    }

    /// Sentence sentiment: the clause after "but", else the sum over clauses.
    pub fn sentiment(&self) -> i32 {
        match (self.conj, self.clauses.last()) {
            (Conj::But, Some(last)) if self.clauses.len() > 1 => last.sentiment(),
            _ => self.clauses.iter().map(Clause::sentiment).sum(),
        }
    }

    /// The sentence with its final " .". `styles` is cycled over the clauses; `swap` reverses the
    /// clauses of an "and" sentence (a paraphrase), never of a "but" one (whose order matters).
    pub fn realise(&self, styles: &[Style], swap: bool) -> String {
        let mut parts: Vec<String> = self
            .clauses
            .iter()
            .enumerate()
            .map(|(i, c)| c.realise(styles[i % styles.len()]))
            .collect();
        if swap && self.conj == Conj::And {
            parts.reverse();
        }
        let joiner = match self.conj {
            Conj::And => " and ",
            Conj::But => " but ",
        };
        format!("{} .", parts.join(joiner))
    }
}

/// Sentiment of a word (+1 positive pole of an affective family, -1 its antonym), for checks
/// that look at text rather than meanings; `None` for every other word.
pub fn word_polarity(word: &str) -> Option<i32> {
    for f in VERBS.iter().chain(ADJECTIVES).filter(|f| f.affective) {
        for (pole, synonyms) in f.poles.iter().enumerate() {
            if synonyms.iter().any(|s| s.split(' ').any(|w| w == word)) {
                return Some(if pole == 0 { 1 } else { -1 });
            }
        }
    }
    None
}

/// Whether a word names an entity or a colour: what paraphrases must keep.
pub fn is_entity_word(word: &str) -> bool {
    [NAMES, ANIMALS, OBJECTS, PLACES, COLOURS]
        .iter()
        .any(|list| list.contains(&word))
}

/// Every word the language can produce (sorted, unique), for a word-level tokenizer.
pub fn vocabulary() -> Vec<&'static str> {
    let mut v: Vec<&'static str> =
        [NAMES, ANIMALS, OBJECTS, PLACES, COLOURS, FUNCTION_WORDS].concat();
    v.extend(NEGATORS);
    v.extend(VERB_INTENSIFIERS);
    v.extend(ADJ_INTENSIFIERS);
    for f in VERBS.iter().chain(ADJECTIVES) {
        for synonyms in f.poles {
            for s in synonyms {
                v.extend(s.split(' '));
            }
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}
