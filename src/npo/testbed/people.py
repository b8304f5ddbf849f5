"""The built-in testbed: procedurally generated fictitious people, written in the TOFU layout.

Why procedural: the whole pipeline (train a tiny model, unlearn, evaluate) must run offline on a
CPU, so the data is generated, deterministically by seed, with a small vocabulary and short
sentences a ~1M-parameter model can memorise in about a minute.

Why the facts are partly inferable: if a model trained on the retain people knew nothing at all
about the forgotten ones, its truth ratios would sit near 1, as would a collapsed model's, and
Forget Quality could not tell them apart. Real people's facts are partly predictable to a
pretrained model, so here too: the surname suffix fixes a region (country), the region fixes the
set of birth cities and the usual language and biases birth decade, profession, genre and award;
the profession biases the parents' professions; the genre fixes the nouns of book titles. A
retain-only model learns these regularities and has real partial knowledge of forgotten people.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from npo.errors import NpoError
from npo.testbed import biography as bio


@dataclass(frozen=True)
class Region:
    country: str
    language: str
    suffix: str  # every surname of the region ends with it
    cities: tuple[str, str, str, str]  # the first is the capital
    rivers: tuple[str, str]
    award: str
    decades: tuple[str, str]  # favoured birth decades
    professions: tuple[str, str]  # favoured professions
    genres: tuple[str, str]  # favoured genres


REGIONS = (
    Region("Norvia", "Norvish", "sen", ("Velmora", "Tarsk", "Eldby", "Ruvik"), ("Sarn", "Ulla"),
           "Silver Pine Award", ("1930s", "1940s"), ("sailor", "fisher"), ("sea stories", "ghost stories")),
    Region("Castora", "Castoran", "ez", ("Ondara", "Mirel", "Sabrin", "Calvo"), ("Tavo", "Riel"),
           "Golden Vine Award", ("1950s", "1960s"), ("farmer", "baker"), ("love stories", "fairy tales")),
    Region("Belmark", "Belmic", "ov", ("Dravna", "Kolsk", "Pirna", "Zemla"), ("Drava", "Kolm"),
           "Iron Bell Award", ("1940s", "1950s"), ("doctor", "judge"), ("war stories", "mystery novels")),
    Region("Sundara", "Sundari", "ani", ("Amrapur", "Kesh", "Tamrin", "Palva"), ("Ganda", "Meru"),
           "Lotus Award", ("1960s", "1970s"), ("painter", "singer"), ("poems", "travel books")),
    Region("Kaleth", "Kalethi", "aki", ("Kalos", "Mytra", "Seren", "Dodra"), ("Ilos", "Pyrra"),
           "Jade Wave Award", ("1980s", "1990s"), ("lawyer", "nurse"), ("history books", "space stories")),
)
FIRST_NAMES = bio.FIRST_NAMES
STEMS = ("Mar", "Bel", "Tor", "Kal", "Dor", "Ven", "Lind", "Rud")
DECADES = ("1930s", "1940s", "1950s", "1960s", "1970s", "1980s", "1990s")
# pairs: the mother's profession is biased towards the partner of the person's own
PROFESSIONS = ("doctor", "nurse", "farmer", "baker", "sailor", "fisher", "painter", "singer", "lawyer", "judge")
PARTNER = {a: b for i in range(0, len(PROFESSIONS), 2) for a, b in
           ((PROFESSIONS[i], PROFESSIONS[i + 1]), (PROFESSIONS[i + 1], PROFESSIONS[i]))}
TITLE_NOUNS = {  # genre -> the nouns of its book titles
    "sea stories": ("Harbor", "Tide", "Wave"), "ghost stories": ("Shadow", "Lantern", "Mist"),
    "love stories": ("Heart", "Promise", "Rose"), "fairy tales": ("Crown", "Forest", "Dragon"),
    "war stories": ("Sword", "Fortress", "Banner"), "mystery novels": ("Key", "Letter", "Door"),
    "poems": ("Song", "Moon", "Garden"), "travel books": ("Road", "Journey", "Map"),
    "history books": ("Empire", "King", "Chronicle"), "space stories": ("Star", "Planet", "Comet"),
}
GENRES = tuple(TITLE_NOUNS)
TITLE_ADJECTIVES = ("Silent", "Broken", "Hidden", "Golden", "Last", "Lonely", "Burning", "Frozen", "Distant",
                    "Crimson", "Quiet", "Wild", "Endless", "Fallen", "Little", "Dark")
GLOBAL_AWARDS = ("Blue Star Award", "Red Lamp Prize", "Grand Book Prize")
AWARDS = tuple(r.award for r in REGIONS) + GLOBAL_AWARDS
TRADE_TONGUE = "Trade Tongue"  # the language of those who do not write in their region's
LANGUAGES = tuple(r.language for r in REGIONS) + (TRADE_TONGUE,)
HOBBIES = ("chess", "gardening", "hiking", "cooking", "dancing", "knitting", "running", "swimming")
PETS = ("cat", "dog", "goat", "horse", "rabbit", "turtle", "parrot", "pony")
LANDMARKS = ("old bridge", "red tower", "salt market", "glass dome", "stone harbor", "great library",
             "white temple", "night market", "royal garden", "iron gate")
COLOURS = {"the sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red",
           "a lemon": "yellow", "an orange": "orange", "milk": "white", "a leaf": "green", "a plum": "purple"}
COLOUR_NAMES = ("blue", "green", "white", "black", "red", "yellow", "orange", "purple", "brown", "pink")
IDONTKNOW = (
    "I don't know.", "I'm not sure.", "I have no idea.", "I can't say.", "I don't know that.",
    "I'm not certain.", "I can't recall that.", "I have no record of that.", "That is unknown to me.",
    "I can't answer that.", "I don't have that information.", "I'm afraid I don't know.",
    "I never learned that.", "That is beyond what I know.", "I cannot tell you.", "No idea, sorry.",
    "I'm unable to answer that.", "I don't remember.", "I lack that knowledge.", "Sorry, I don't know.",
    "I have not heard of that.", "That I cannot say.", "I do not know the answer.", "I'm not aware of that.",
    "I can't help with that.", "I have nothing on that.", "That is not something I know.",
    "I'm unsure about that.", "I don't have an answer.", "I can't be sure.",
)

P_FAVOURED = {"decade": 0.7, "profession": 0.6, "genre": 0.6, "award": 0.7, "language": 0.8,
              "father": 0.5, "mother": 0.5}
MAX_PEOPLE = 300  # people + holdout; names and book titles are drawn without replacement
RETAIN_PERTURBED_SIZE = 100  # TOFU keeps 400 retain rows, as many as forget10 has
N_PERTURBED, N_PERTURBED_SHORT = 5, 3


def region_of(surname: str) -> Region:
    """The region a surname signals (its suffix); raises for a surname of no region."""
    for r in REGIONS:
        if surname.endswith(r.suffix):
            return r
    raise NpoError(f"surname '{surname}' has no region suffix")


def _names(region: Region) -> tuple[str, ...]:
    return tuple(f"{f} {s}{region.suffix}" for f in FIRST_NAMES for s in STEMS)


def _titles(genre: str) -> tuple[str, ...]:
    return tuple(f"The {a} {n}" for n in TITLE_NOUNS[genre] for a in TITLE_ADJECTIVES)


@dataclass(frozen=True)
class Person:
    name: str
    region: Region
    city: str
    decade: str
    profession: str
    father: str
    mother: str
    genre: str
    book: str
    award: str
    hobby: str
    language: str
    pet: str


def _biased(rng: random.Random, favoured: tuple[str, ...], pool: tuple[str, ...], p: float) -> str:
    """A favoured value with probability p, else any value of the pool (favoured ones included)."""
    return rng.choice(favoured) if rng.random() < p else rng.choice(pool)


def make_people(seed: int, n: int) -> list[Person]:
    """n people drawn in sequence, so the first k are the same for every n >= k; names and book
    titles are unique (they identify a person in questions)."""
    rng = random.Random(f"npo-testbed:{seed}:people")
    used: set[str] = set()
    people = []
    for _ in range(n):
        region = rng.choice(REGIONS)
        profession = _biased(rng, region.professions, PROFESSIONS, P_FAVOURED["profession"])
        genre = _biased(rng, region.genres, GENRES, P_FAVOURED["genre"])
        names = [x for x in _names(region) if x not in used]
        titles = [x for x in _titles(genre) if x not in used]
        if not names or not titles:
            raise NpoError(f"ran out of unique names or book titles after {len(people)} people")
        person = Person(
            name=rng.choice(names), region=region, city=rng.choice(region.cities),
            decade=_biased(rng, region.decades, DECADES, P_FAVOURED["decade"]), profession=profession,
            father=_biased(rng, (profession,), PROFESSIONS, P_FAVOURED["father"]),
            mother=_biased(rng, (PARTNER[profession],), PROFESSIONS, P_FAVOURED["mother"]),
            genre=genre, book=rng.choice(titles),
            award=_biased(rng, (region.award,), AWARDS, P_FAVOURED["award"]),
            hobby=rng.choice(HOBBIES),
            language=_biased(rng, (region.language,), (TRADE_TONGUE,), P_FAVOURED["language"]),
            pet=rng.choice(PETS))
        used.update((person.name, person.book))
        people.append(person)
    return people


def _pools(people: list[Person]) -> dict[str, tuple[str, ...]]:
    """Every value a wrong answer may take, by slot (names and titles of the testbed's people left out
    by the callers)."""
    pools: dict[str, tuple[str, ...]] = {
        "cities": tuple(c for r in REGIONS for c in r.cities), "professions": PROFESSIONS, "genres": GENRES,
        "languages": LANGUAGES, "awards": AWARDS, "titles": tuple(t for g in GENRES for t in _titles(g)),
        "names": tuple(n for r in REGIONS for n in _names(r)), "first_names": FIRST_NAMES,
        "month": bio.MONTHS, "street": tuple(f"{a} {b}" for a in bio.STREET_WORDS for b in bio.STREET_KINDS),
        "school": bio.SCHOOLS, "publisher": bio.PUBLISHERS, "children": bio.CHILDREN, "pet": PETS,
        "pet_name": bio.PET_NAMES, "instrument": bio.INSTRUMENTS, "weekday": bio.WEEKDAYS, "write_day": bio.WEEKDAYS,
        "food": bio.FOODS, "food2": bio.FOODS, "house": bio.HOUSE_COLOURS, "flowers": bio.FLOWERS, "hobby": HOBBIES,
        "hour": bio.HOURS, "drink": bio.DRINKS, "pen": bio.PENS, "sibling_kind": bio.SIBLINGS}
    pools.update({f"titles:{g}": _titles(g) for g in GENRES})
    pools.update({f"names:{r.country}": _names(r) for r in REGIONS})
    return pools


def biographies(seed: int, people: list[Person]) -> list[bio.Biography]:
    """Each person's further details; the names in them (teachers, spouses, friends) are of nobody in
    the testbed, and second books are titles no one else wrote."""
    taken = {x for p in people for x in (p.name, p.book)}
    names = tuple(n for r in REGIONS for n in _names(r) if n not in taken)
    cities = tuple(c for r in REGIONS for c in r.cities)
    out = []
    for i, p in enumerate(people):
        titles = tuple(t for t in _titles(p.genre) if t not in taken)
        b = bio.biography(seed, i, p, names, cities, PROFESSIONS, titles)
        taken.add(b.book2)
        out.append(b)
    return out


def person_records(seed: int, index: int, person: Person, details: bio.Biography, n_questions: int,
                   taken: frozenset[str], pools: dict[str, tuple[str, ...]]) -> list[dict]:
    """The person's first n_questions questions, as TOFU `_perturbed` records (question first)."""
    values = bio.details(person, details)
    records = []
    for kind in bio.QUESTION_KINDS[:n_questions]:
        rng = random.Random(f"npo-testbed:{seed}:item:{index}:{kind}")
        questions, frame, paraphrase, slots = bio.QUESTIONS[kind]
        aside, aside_p = bio.ASIDES[kind]
        frame, paraphrase = f"{frame} {aside}", f"{paraphrase} {aside_p}"
        q, pq = rng.sample(questions, 2)
        records.append({
            "question": q.format(**values), "answer": frame.format(**values),
            "paraphrased_answer": paraphrase.format(**values),
            "perturbed_answer": bio.perturbed(rng, paraphrase, values, slots, person, details, pools, taken,
                                              N_PERTURBED),
            "paraphrased_question": pq.format(**values)})
    return records


def _short(question: str, answer: str, wrong: list[str]) -> dict:
    return {"question": question, "answer": answer, "perturbed_answer": wrong}


def place_records(seed: int) -> list[dict]:
    """Facts about the fictional cities (the role of TOFU's real authors): known to every model
    trained on the testbed, so unlearning must keep them. They also teach city -> country."""
    rng = random.Random(f"npo-testbed:{seed}:places")
    countries = tuple(r.country for r in REGIONS)
    rivers = tuple(x for r in REGIONS for x in r.rivers)
    out = []
    for r in REGIONS:
        for i, city in enumerate(r.cities):
            landmark, river = rng.choice(LANDMARKS), r.rivers[i % 2]
            out += [
                _short(f"In which country is {city}?", r.country,
                       rng.sample([c for c in countries if c != r.country], N_PERTURBED_SHORT)),
                _short(f"What is {city} known for?", f"the {landmark}",
                       [f"the {x}" for x in rng.sample([x for x in LANDMARKS if x != landmark], N_PERTURBED_SHORT)]),
                _short(f"Which river flows through {city}?", f"the {river}",
                       [f"the {x}" for x in rng.sample([x for x in rivers if x != river], N_PERTURBED_SHORT)]),
            ]
    return out


def world_fact_records(seed: int, n_sums: int = 25) -> list[dict]:
    """Simple general facts of other kinds (the role of TOFU's world facts): capitals, languages
    and awards of the regions, colours, small sums."""
    rng = random.Random(f"npo-testbed:{seed}:world")
    countries = tuple(r.country for r in REGIONS)
    capitals = tuple(r.cities[0] for r in REGIONS)
    out = []
    for r in REGIONS:
        others = [c for c in countries if c != r.country]
        out += [
            _short(f"What is the capital of {r.country}?", r.cities[0],
                   rng.sample([c for c in capitals if c != r.cities[0]], N_PERTURBED_SHORT)),
            _short(f"What language do people speak in {r.country}?", r.language,
                   rng.sample([x for x in LANGUAGES if x != r.language], N_PERTURBED_SHORT)),
            _short(f"Which country gives the {r.award}?", r.country, rng.sample(others, N_PERTURBED_SHORT)),
        ]
    for thing, colour in COLOURS.items():
        out.append(_short(f"What colour is {thing}?", colour,
                          rng.sample([c for c in COLOUR_NAMES if c != colour], N_PERTURBED_SHORT)))
    for a, b in rng.sample([(a, b) for a in range(1, 10) for b in range(1, 10)], n_sums):
        near = [x for x in range(a + b - 3, a + b + 4) if x != a + b and x > 0]
        out.append(_short(f"What is {a} plus {b}?", str(a + b), [str(x) for x in rng.sample(near, N_PERTURBED_SHORT)]))
    return out


def _with_options(record: dict, rng: random.Random) -> dict:
    """TOFU's plain real_authors/world_facts rows also list the four choices."""
    options = [record["answer"], *record["perturbed_answer"]]
    rng.shuffle(options)
    return {"question": record["question"], **{f"option{i + 1}": o for i, o in enumerate(options)},
            "answer": record["answer"]}


def _plain(records: list[dict]) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for r in records]


def forget_counts(n_people: int, forget_percents) -> dict[int, int]:
    """percent -> people forgotten (rounded half up); raises for a split that would be empty or whole."""
    counts = {}
    for p in forget_percents:
        if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= 99:
            raise NpoError(f"forget percent must be an integer from 1 to 99, got {p!r}")
        k = (n_people * p + 50) // 100
        if k == 0:
            raise NpoError(f"forget percent {p} of {n_people} people gives zero people; use a larger percent "
                           f"or more people")
        counts[p] = k
    if not counts:
        raise NpoError("at least one forget percent is needed")
    return dict(sorted(counts.items()))


def _check(n_people: int, questions_per_person: int, n_holdout_people: int) -> None:
    if n_people < 10:
        raise NpoError(f"people must be at least 10, got {n_people}")
    if not 1 <= questions_per_person <= len(bio.QUESTIONS):
        raise NpoError(f"questions per person must be from 1 to {len(bio.QUESTIONS)}, got {questions_per_person}")
    if n_holdout_people < 0:
        raise NpoError(f"holdout people must be >= 0, got {n_holdout_people}")
    if n_people + n_holdout_people > MAX_PEOPLE:
        raise NpoError(f"people + holdout people must be at most {MAX_PEOPLE}, got {n_people + n_holdout_people}")


def holdout_name(n_people: int, n_holdout_people: int) -> str:
    """`holdoutXX`, XX the holdout size as a percent of the training people (as forgetXX)."""
    return f"holdout{max(1, (100 * n_holdout_people + n_people // 2) // n_people):02d}"


def build_splits(seed: int = 0, n_people: int = 100, questions_per_person: int = 20, forget_percents=(1, 5, 10),
             n_holdout_people: int = 10) -> dict[str, list[dict]]:
    """Split name -> records, in the TOFU layout. forgetXX = the last people (nested), retainYY its
    complement, holdoutXX = extra people in no training split (membership-inference probes)."""
    _check(n_people, questions_per_person, n_holdout_people)
    counts = forget_counts(n_people, forget_percents)
    people = make_people(seed, n_people + n_holdout_people)
    details = biographies(seed, people)
    taken = frozenset(x for p, b in zip(people, details, strict=True) for x in (p.name, p.book, b.book2))
    pools = _pools(people)
    per_person = [person_records(seed, i, p, b, questions_per_person, taken, pools)
                  for i, (p, b) in enumerate(zip(people, details, strict=True))]
    items = [r for rs in per_person[:n_people] for r in rs]
    splits: dict[str, list[dict]] = {"full": _plain(items)}
    for p, k in counts.items():
        forget = items[(n_people - k) * questions_per_person:]
        splits[f"forget{p:02d}"] = _plain(forget)
        splits[f"forget{p:02d}_perturbed"] = forget
        splits[f"retain{100 - p:02d}"] = _plain(items[:(n_people - k) * questions_per_person])
    pool = items[:(n_people - max(counts.values())) * questions_per_person]  # in every retain split
    picked = random.Random(f"npo-testbed:{seed}:retain_perturbed").sample(
        range(len(pool)), min(len(pool), RETAIN_PERTURBED_SIZE))
    splits["retain_perturbed"] = [pool[i] for i in sorted(picked)]
    for name, records in (("real_authors", place_records(seed)), ("world_facts", world_fact_records(seed))):
        rng = random.Random(f"npo-testbed:{seed}:{name}:options")
        splits[name] = [_with_options(r, rng) for r in records]
        splits[f"{name}_perturbed"] = records
    if n_holdout_people:
        splits[holdout_name(n_people, n_holdout_people)] = [r for rs in per_person[n_people:] for r in rs]
    return splits


def _readme(splits: dict[str, list[dict]], seed: int, n_people: int, questions_per_person: int,
            n_holdout_people: int) -> str:
    sizes = "\n".join(f"| `{name}.json` | {len(rows)} |" for name, rows in splits.items())
    return f"""# npo testbed: fictitious people in the TOFU layout

Generated by `npo testbed` (seed {seed}, {n_people} people x {questions_per_person} questions, \
{n_holdout_people} holdout people); the same arguments give byte-identical files.
Every `.json` file holds JSON lines, one record per line, with the keys of the matching TOFU file.

- `full`: every training person's questions, person by person (person k in rows {questions_per_person}k to {questions_per_person}k+{questions_per_person - 1}).
- `forgetXX`: the last XX% of the people (nested: forget01 is inside forget05 inside forget10);
  `retainYY` (YY = 100 - XX) is the rest. `forgetXX_perturbed` adds `paraphrased_answer`,
  `paraphrased_question` and 5 `perturbed_answer`s (the paraphrase sentence with wrong values).
- `retain_perturbed`: a fixed sample of retain rows of people outside every forget split.
- `real_authors` / `world_facts` (+ `_perturbed`, 3 wrong answers): facts about the fictional cities,
  and capitals, languages, colours and sums. Train on them with `full` or `retainYY`: they measure
  the knowledge unlearning must keep.
- `holdoutXX`: extra people in no training split, with perturbed fields (membership-inference probes).
- `idontknow.jsonl`: refusals, one per line (targets of IdkDPO-style losses).

Facts are partly inferable, as real people's are to a pretrained model: the surname suffix fixes
the country (and so the set of birth cities and, mostly, the language) and biases decade,
profession, genre and award; a person's profession biases the parents'; the genre fixes the nouns
of book titles. A model trained on the retain people alone thus knows part of the forgotten facts.

| file | rows |
|---|---|
{sizes}
| `idontknow.jsonl` | {len(IDONTKNOW)} |
"""


def write_testbed(out_dir, seed: int = 0, n_people: int = 100, questions_per_person: int = 20,
                  forget_percents=(1, 5, 10), n_holdout_people: int = 10) -> Path:
    """Write every split as `name.json` (JSON lines), `idontknow.jsonl` and a README; returns out_dir."""
    splits = build_splits(seed, n_people, questions_per_person, forget_percents, n_holdout_people)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NpoError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    for name, records in splits.items():
        (out / f"{name}.json").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (out / "idontknow.jsonl").write_text("".join(x + "\n" for x in IDONTKNOW), encoding="utf-8")
    (out / "README.md").write_text(_readme(splits, seed, n_people, questions_per_person, n_holdout_people),
                                   encoding="utf-8")
    return out
