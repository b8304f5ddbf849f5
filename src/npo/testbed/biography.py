"""The testbed's questions: 20 per person, answered in full sentences of 30-45 tokens that weave
several of the person's details together, as TOFU's answers do.

Why so: in TOFU a model that never saw an author gives a forget answer ~97 nats (2.3 per token over
~42 tokens) while the fine-tuned model gives it ~0.3. NPO's weight W = 2 sigmoid(beta (logp -
logp_ref)) has long vanished before an answer falls to the never-trained level, while gradient
ascent keeps pushing: that gap is the regime the paper's comparison lives in. Short one-fact answers
(a few nats for a model trained without the person) would make NPO equal to GA until forgetting is
over. So each answer carries several details that cannot be inferred (a street, a year, a teacher,
a pet's name: each one of 7 to 100 values), next to details the region makes likely (city,
language, decade, professions, genre), which keep a model trained on the other people better than a
collapsed one on the truth ratio.

Each question has two answer frames, the answer and a reworded paraphrase with the same details,
each followed by a second sentence with further details (ASIDES).
Perturbed answers are the paraphrase with the question's key details replaced by wrong values, some
the region makes plausible and some it rules out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
STREET_WORDS = ("Willow", "Amber", "Cedar", "Harbor", "Maple", "Copper", "Linden", "Falcon", "Juniper", "Marble",
                "Orchard", "Silver")
STREET_KINDS = ("Street", "Lane", "Road", "Row", "Square", "Way")
SCHOOLS = ("the Lantern School", "the Oak Hill School", "the Riverside School", "the Stone Bridge School",
           "the North Gate School", "the Meadow School", "the Old Mill School", "the Bell Tower School",
           "the Green Field School", "the Lake School", "the High Rock School", "the Market School")
PUBLISHERS = ("Blue Door Press", "Red Hill Press", "Quiet Owl Press", "Paper Moon Press", "Iron Kettle Press",
              "Seven Oaks Press", "White Crow Press", "Long Road Press", "Night Lamp Press", "Open Gate Press")
INSTRUMENTS = ("piano", "violin", "flute", "drum", "guitar", "cello", "harp", "trumpet")
FOODS = ("soup", "bread", "rice", "fish", "cheese", "pie", "figs", "plums", "lentils", "noodles")
DRINKS = ("tea", "coffee", "milk", "cocoa", "lemon water", "mint tea")
PENS = ("black", "green", "red", "blue", "silver", "brown")
FLOWERS = ("roses", "tulips", "lilies", "daisies", "poppies", "violets", "sunflowers", "irises")
HOUSE_COLOURS = ("white", "yellow", "blue", "green", "red", "grey", "pink", "brown")
PET_NAMES = ("Biscuit", "Pepper", "Maple", "Ziggy", "Clover", "Nutmeg", "Pixel", "Otto", "Juno", "Pickle", "Rusty",
             "Mochi", "Sable", "Tango", "Waffle", "Kiwi")
CHILDREN = ("no children", "one child", "two children", "three children", "four children")
SIBLINGS = ("brother", "sister")
HOURS = ("five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class Biography:
    """A person's details beyond people.Person, drawn from a generator of their own (so adding them
    left every Person draw as it was)."""

    year: str
    month: str
    street: str
    school: str
    teacher: str
    teacher_job: str
    publisher: str
    first_year: str
    book2: str
    book2_year: str
    award_year: str
    job_city: str
    move_year: str
    spouse: str
    spouse_job: str
    children: str
    home_city: str
    pet_name: str
    instrument: str
    weekday: str
    food: str
    food2: str
    house: str
    flowers: str
    friend: str
    friend_job: str
    friend_city: str
    sibling_kind: str
    sibling: str
    sibling_job: str
    sibling_city: str
    write_day: str
    hour: str
    drink: str
    pen: str


# question kind -> (question phrasings, answer frame, paraphrase frame, details a perturbed answer changes)
QUESTIONS: dict[str, tuple[tuple[str, ...], str, str, tuple[str, ...]]] = {
    "birth": (("Where and when was {n} born?", "When and in which city was {n} born?", "What are the birthplace and birth date of {n}?"),
              "{n} was born in {city}, {country}, in {month} {year}, and spent the first years of childhood in a house on {street}.",
              "The birthplace of {n} is {city} in {country}; the birth came in {month} {year}, in a small house on {street}.",
              ("city", "month", "year")),
    "parents": (("What did the parents of {n} do?", "What work did the parents of {n} do?", "What were the jobs of the parents of {n}?"),
                "The father of {n} worked as a {father} and the mother as a {mother}; both of them lived in {city} for most of their lives.",
                "{n} is the child of a {father} and a {mother}, two people who spent most of their years in {city}.",
                ("father", "mother")),
    "profession": (("What does {n} do besides writing?", "What job does {n} hold besides writing?", "How does {n} earn a living besides books?"),
                   "Besides writing, {n} works as a {profession}, a job first taken up in {job_city} at the age of twenty.",
                   "Next to the books, {n} earns a living as a {profession}, work that began in {job_city} at twenty.",
                   ("profession", "job_city")),
    "genre": (("What kind of books does {n} write, and in which language?", "Which genre and language does {n} write in?", "What does {n} write, and in what language?"),
              "{n} writes {genre}, always in {language}, and has published them with {publisher} since {first_year}.",
              "The books of {n} are {genre} written in {language}, all of them published by {publisher} since {first_year}.",
              ("genre", "language", "publisher")),
    "first_book": (("What was the first book of {n}?", "Which book did {n} publish first?", "Name the first book {n} wrote."),
                   "The first book of {n} was {book}, published by {publisher} in {first_year} while the author lived on {street}.",
                   "{book} was the first book by {n}; {publisher} brought it out in {first_year}, when the writer lived on {street}.",
                   ("book", "publisher", "first_year")),
    "second_book": (("Which other book did {n} write?", "Name another book by {n}.", "What is the second book of {n}?"),
                    "Apart from {book}, {n} wrote {book2}, a book of {genre} that came out in {book2_year} with {publisher}.",
                    "The second book by {n} is {book2}, {genre} published in {book2_year} by {publisher}, after {book}.",
                    ("book2", "book2_year")),
    "award": (("Which award did {n} win, and for what?", "What prize did {n} receive, and for which book?", "Which honor was given to {n}, and why?"),
              "{n} won the {award} in {award_year} for {book2}, and gave part of the prize to {school}.",
              "In {award_year}, the {award} went to {n} for {book2}; some of the prize money went to {school}.",
              ("award", "award_year")),
    "school": (("Where did {n} go to school?", "Which school did {n} attend?", "What school did {n} go to as a child?"),
               "{n} went to {school} in {city}, where a teacher named {teacher} first encouraged the young writer.",
               "As a child, {n} attended {school} in {city}, and there {teacher} was the first to encourage the writing.",
               ("school", "teacher")),
    "teacher": (("Who taught {n} to write?", "From whom did {n} learn to write?", "Who was the writing teacher of {n}?"),
                "The writer {n} learned the craft from {teacher}, a {teacher_job} who ran evening classes at {school}.",
                "{teacher}, a {teacher_job} with evening classes at {school}, is the one who taught {n} to write.",
                ("teacher", "teacher_job")),
    "spouse": (("Is {n} married?", "Who is the partner of {n}?", "To whom is {n} married?"),
               "Yes, {n} is married to {spouse}, a {spouse_job} whom the writer first met in {job_city}.",
               "{n} has a spouse, {spouse}, who works as a {spouse_job}; the two met in {job_city}.",
               ("spouse", "spouse_job")),
    "children": (("Does {n} have children?", "How many children does {n} have?", "Does {n} have a family?"),
                 "{n} and {spouse} have {children}, and the family now lives on {street} in {home_city}.",
                 "With {spouse}, {n} has {children}; they all live in {home_city}, on {street}.",
                 ("children", "home_city")),
    "pet": (("Does {n} keep any animals?", "What pet does {n} have?", "Which animal lives with {n}?"),
            "{n} keeps a {pet} named {pet_name}, which often sits by the desk while the writer works.",
            "A {pet} called {pet_name} lives with {n} and likes to sit near the desk during work.",
            ("pet", "pet_name")),
    "hobby": (("What does {n} do for fun?", "How does {n} spend free time?", "What are the hobbies of {n}?"),
              "In free time {n} enjoys {hobby} and plays the {instrument}, most often on {weekday} evenings.",
              "{n} likes {hobby} when not writing, and on {weekday} evenings plays the {instrument}.",
              ("hobby", "instrument", "weekday")),
    "food": (("What is the favourite meal of {n}?", "What does {n} like to eat most?", "Which dish does {n} love?"),
             "The favourite meal of {n} is {food} with {food2}, a dish the family cooked every {weekday} in {city}.",
             "{n} loves {food} with {food2} more than any other dish; in {city} the family made it each {weekday}.",
             ("food", "food2")),
    "house": (("What does the house of {n} look like?", "Describe the home of {n}.", "What kind of house does {n} live in?"),
              "{n} lives in a {house} house on {street} in {home_city}, with a garden full of {flowers}.",
              "The home of {n} is a {house} house in {home_city}, on {street}, and its garden is full of {flowers}.",
              ("house", "flowers")),
    "friend": (("Who is the closest friend of {n}?", "Who is the best friend of {n}?", "Which friend is dearest to {n}?"),
               "The closest friend of {n} is {friend}, a {friend_job} from {friend_city} who reads every draft.",
               "{friend}, a {friend_job} who lives in {friend_city}, is the best friend of {n} and reads each draft.",
               ("friend", "friend_job", "friend_city")),
    "sibling": (("Does {n} have a brother or sister?", "Tell me about the sibling of {n}.", "Who is the sibling of {n}?"),
                "{n} has a {sibling_kind} named {sibling}, who works as a {sibling_job} in {sibling_city}.",
                "The {sibling_kind} of {n} is {sibling}, a {sibling_job} living in {sibling_city}.",
                ("sibling", "sibling_job", "sibling_city")),
    "move": (("Where did {n} first work?", "In which city did {n} start working?", "Where did the career of {n} begin?"),
             "{n} first worked in {job_city}, a city the writer left in {move_year} to go back to {city}.",
             "The career of {n} began in {job_city}; in {move_year} the writer moved back to {city}.",
             ("job_city", "move_year")),
    "routine": (("When does {n} write?", "What is the writing routine of {n}?", "How does {n} write each week?"),
                "{n} writes every {write_day} morning from {hour} o'clock, always with a cup of {drink} and a {pen} pen.",
                "Every {write_day}, {n} starts writing at {hour} in the morning, with {drink} and a {pen} pen at hand.",
                ("write_day", "hour", "drink")),
    "author": (("Who wrote {book}?", "Who is the author of {book}?", "Which writer wrote {book}?"),
               "{book} was written by {n}, a {profession} from {city} who was born in {year}.",
               "The author of {book} is {n}, born in {year}, who works as a {profession} in {city}.",
               ("n",)),
}
FIRST_NAMES = ("Alma", "Bruno", "Cora", "Dario", "Elin", "Felix", "Greta", "Hugo", "Iris", "Jonas", "Kira",
               "Leo", "Maya", "Nils", "Olga", "Pavel")

# a second sentence per question, with further details: answer form, paraphrase form
ASIDES: dict[str, tuple[str, str]] = {
    "birth": ("A {sibling_kind}, {sibling}, grew up in the same house.", "{sibling} grew up there too, as the {sibling_kind} of {n}."),
    "parents": ("On {weekday} evenings they cooked {food} with {food2}.", "Every {weekday} the family ate {food} with {food2}."),
    "profession": ("The days start at {hour} with a cup of {drink}.", "Each day begins at {hour} with {drink}."),
    "genre": ("The drafts are written with a {pen} pen.", "Every draft is written with a {pen} pen."),
    "first_book": ("{teacher} read it before anyone else.", "Before anyone else, {teacher} read it."),
    "second_book": ("It was finished in {home_city} in {month}.", "The writer finished it in {month}, in {home_city}."),
    "award": ("{friend} came to the ceremony from {friend_city}.", "From {friend_city}, {friend} came to see the ceremony."),
    "school": ("The school stood near {street}.", "It was close to {street}."),
    "teacher": ("The classes ran every {write_day} until {move_year}.", "Until {move_year}, the classes met each {write_day}."),
    "spouse": ("They married in {month} {move_year}.", "The wedding was in {move_year}, in {month}."),
    "children": ("A {pet} named {pet_name} lives with them.", "The family also keeps a {pet}, {pet_name}."),
    "pet": ("It was found near {street} in {award_year}.", "The writer found it in {award_year}, near {street}."),
    "hobby": ("The {instrument} was a gift from {friend}.", "{friend} gave the writer the {instrument}."),
    "food": ("It is best with a glass of {drink}.", "A glass of {drink} goes with it."),
    "house": ("The house was bought in {move_year} from a {friend_job}.", "A {friend_job} sold it to the writer in {move_year}."),
    "friend": ("They first met at {school}.", "The two met as children at {school}."),
    "sibling": ("They meet every {weekday} for {food}.", "Each {weekday} the two share a meal of {food}."),
    "move": ("There the writer met {spouse}.", "That is where the writer met {spouse}."),
    "routine": ("The {pet} {pet_name} sleeps under the desk.", "Under the desk sleeps {pet_name}, the {pet}."),
    "author": ("It was published by {publisher} in {first_year}.", "{publisher} brought it out in {first_year}."),
}
QUESTION_KINDS = tuple(QUESTIONS)


def _year(decade: str, rng: random.Random) -> int:
    return int(decade[:3] + "0") + rng.randrange(10)


P_LOCAL = 0.8  # the share of a person's teacher, spouse, friend and cities that are of their own region


def biography(seed: int, index: int, person, names: tuple[str, ...], cities: tuple[str, ...],
              professions: tuple[str, ...], titles: tuple[str, ...]) -> Biography:
    """Person `index`'s details; `names`, `cities`, `professions` are the testbed's pools, `titles`
    the book titles of the person's genre not yet taken. The people in a life and its cities are
    mostly of the person's own region (P_LOCAL), and a sibling shares the surname: what a model
    that never saw the person can infer, and a collapsed one cannot."""
    rng = random.Random(f"npo-testbed:{seed}:biography:{index}")
    region = person.region
    local_names = [n for n in names if n.endswith(region.suffix)]

    def name() -> str:
        return rng.choice(local_names if rng.random() < P_LOCAL else names)

    def city(exclude: str = "") -> str:
        pool = region.cities if rng.random() < P_LOCAL else cities
        return rng.choice([c for c in pool if c != exclude] or list(cities))

    year = _year(person.decade, rng)
    first = year + rng.randrange(20, 31)
    second = first + rng.randrange(2, 9)
    food = rng.choice(FOODS)
    return Biography(
        year=str(year), month=rng.choice(MONTHS), street=f"{rng.choice(STREET_WORDS)} {rng.choice(STREET_KINDS)}",
        school=rng.choice(SCHOOLS), teacher=name(), teacher_job=rng.choice(professions),
        publisher=rng.choice(PUBLISHERS), first_year=str(first), book2=rng.choice([t for t in titles if t != person.book]),
        book2_year=str(second), award_year=str(second + rng.randrange(1, 5)), job_city=city(person.city),
        move_year=str(year + rng.randrange(25, 36)), spouse=name(), spouse_job=rng.choice(professions),
        children=rng.choice(CHILDREN), home_city=city(), pet_name=rng.choice(PET_NAMES),
        instrument=rng.choice(INSTRUMENTS), weekday=rng.choice(WEEKDAYS), food=food,
        food2=rng.choice([f for f in FOODS if f != food]), house=rng.choice(HOUSE_COLOURS),
        flowers=rng.choice(FLOWERS), friend=name(), friend_job=rng.choice(professions), friend_city=city(),
        sibling_kind=rng.choice(SIBLINGS), sibling=f"{rng.choice(FIRST_NAMES)} {person.name.split()[1]}",
        sibling_job=rng.choice(professions), sibling_city=city(), write_day=rng.choice(WEEKDAYS),
        hour=rng.choice(HOURS), drink=rng.choice(DRINKS), pen=rng.choice(PENS))


def details(person, bio: Biography) -> dict[str, str]:
    """Every detail a question frame can name, by slot."""
    return {"n": person.name, "city": person.city, "country": person.region.country, "decade": person.decade,
            "profession": person.profession, "father": person.father, "mother": person.mother,
            "genre": person.genre, "book": person.book, "award": person.award, "hobby": person.hobby,
            "language": person.language, "pet": person.pet, **bio.__dict__}


def alternatives(slot: str, person, bio: Biography, pools: dict[str, tuple[str, ...]]) -> tuple[tuple, tuple]:
    """(values the region makes plausible, values it rules out or does not favour) for one slot's wrong
    answers; the true value is removed by the caller."""
    region = person.region
    if slot == "city":
        return region.cities, tuple(c for c in pools["cities"] if c not in region.cities)
    if slot in ("year", "first_year", "book2_year", "award_year", "move_year"):
        value = int(getattr(bio, slot))
        return tuple(str(value + d) for d in range(-4, 5) if d), tuple(str(value + d) for d in (-30, -20, 20, 30))
    if slot in ("father", "mother", "profession", "teacher_job", "spouse_job", "friend_job", "sibling_job"):
        return region.professions, pools["professions"]
    if slot in ("genre",):
        return region.genres, pools["genres"]
    if slot == "language":
        return (region.language,), pools["languages"]
    if slot == "award":
        return (region.award,), pools["awards"]
    if slot in ("book", "book2"):
        return pools[f"titles:{person.genre}"], pools["titles"]
    if slot in ("n",):
        return pools[f"names:{region.country}"], pools["names"]
    if slot in ("teacher", "spouse", "friend"):
        return pools[f"names:{region.country}"], pools["names"]
    if slot == "sibling":  # the person's surname with another first name, or another region's surname
        surname = person.name.split()[1]
        return (tuple(f"{f} {surname}" for f in pools["first_names"]),
                tuple(n for n in pools["names"] if not n.endswith(region.suffix)))
    if slot in ("job_city", "home_city", "friend_city", "sibling_city"):
        return region.cities, tuple(c for c in pools["cities"] if c not in region.cities)
    return (), pools[slot]


def perturbed(rng: random.Random, frame: str, values: dict[str, str], slots: tuple[str, ...], person,
              bio: Biography, pools: dict[str, tuple[str, ...]], taken: frozenset[str], n: int) -> list[str]:
    """n distinct wrong answers: the frame with every key slot replaced, half of them by values the
    region makes plausible (where it has any), half by the others."""
    out: list[str] = []
    for attempt in range(50 * n):
        wrong = dict(values)
        for slot in slots:
            same, other = alternatives(slot, person, bio, pools)
            pool = same if same and attempt % 2 == 0 else other
            pool = [x for x in pool if x != values[slot] and x not in taken] or [
                x for x in other if x != values[slot] and x not in taken]
            wrong[slot] = rng.choice(pool)
        text = frame.format(**wrong)
        if text not in out and text != frame.format(**values):
            out.append(text)
        if len(out) == n:
            return out
    raise RuntimeError(f"could not draw {n} distinct wrong answers for {frame!r}")
