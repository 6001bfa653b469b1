"""A built-in corpus: simple children's stories from a small grammar, so demos need no download.

Six story plots, a few hundred words and a recurring cast keep the text regular enough for a tiny
model to learn in minutes of CPU training; slots and optional sentences give it variety.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

SEPARATOR = "\n<|endoftext|>\n"

GIRLS = ["Lily", "Mia", "Anna", "Lucy", "Emma", "Sara", "Zoe", "Ella", "Rose", "Amy"]
BOYS = ["Tom", "Ben", "Sam", "Max", "Tim", "Jack", "Leo", "Finn", "Jake", "Noah"]
HELPERS = ["mom", "dad", "grandma", "grandpa"]
COLORS = ["red", "blue", "green", "yellow", "pink", "purple", "brown", "white"]
SIZES = ["little", "big", "small", "tiny"]
TOYS = ["ball", "kite", "doll", "car", "boat", "train", "teddy bear", "drum", "hat", "truck"]
FOODS = ["red apple", "cookie", "banana", "carrot", "piece of bread", "sandwich"]
# (animal, the sound it makes)
ANIMALS = [("dog", "Woof"), ("cat", "Meow"), ("bird", "Tweet"), ("frog", "Ribbit"),
           ("duck", "Quack"), ("bunny", "Squeak"), ("puppy", "Woof"), ("kitten", "Meow")]
# (place, things to do there, spots to look in)
PLACES = [
    ("park", ["ran on the grass", "played on the swings", "went down the slide"],
     ["under the bench", "behind the big tree", "near the swings"]),
    ("beach", ["built a sand castle", "splashed in the water", "looked for shells"],
     ["behind a rock", "under the sand", "near the water"]),
    ("garden", ["picked flowers", "watered the plants", "looked for bugs"],
     ["under the bushes", "behind the flowers", "near the gate"]),
    ("forest", ["walked under the tall trees", "picked up sticks", "listened to the birds"],
     ["under a log", "behind a tree", "near the little river"]),
    ("farm", ["fed the cows", "played in the hay", "chased the chickens"],
     ["in the hay", "behind the barn", "near the fence"]),
]
FEELINGS_BAD = ["sad", "worried", "upset"]
FEELINGS_GOOD = ["happy", "glad", "excited"]
SKILLS = [  # (wants to..., the try that fails, what goes wrong)
    ("ride a bike", "got on the bike and pushed the pedals", "fell down on the grass"),
    ("climb the big tree", "held on to a branch and pulled", "slipped and fell down"),
    ("fly a kite", "ran fast with the kite", "saw the kite fall to the ground"),
    ("swim in the lake", "jumped in the water and kicked", "went under and came up coughing"),
    ("jump over the rope", "ran and jumped", "tripped on the rope"),
]
GAMES_INSIDE = ["built a fort with pillows", "drew pictures of the sun", "baked cookies",
                "played hide and seek", "read a book about the sea"]
NOISES = ["a loud bang", "a soft scratch at the door", "a strange sound outside"]


@dataclass
class Kid:
    """A character and the pronouns that go with them."""

    name: str
    he: str
    his: str
    him: str


def _kid(rng: random.Random, avoid: str = "") -> Kid:
    girl = rng.random() < 0.5
    name = rng.choice([n for n in (GIRLS if girl else BOYS) if n != avoid])
    return Kid(name, "she", "her", "her") if girl else Kid(name, "he", "his", "him")


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _intro(rng: random.Random, kid: Kid) -> str:
    kind = "girl" if kid.he == "she" else "boy"
    return rng.choice([
        f"Once upon a time, there was a {rng.choice(['little', 'happy'])} {kind} named {kid.name}.",
        f"There was a {kind} named {kid.name} who lived in a small house.",
        f"There was once a {kind} called {kid.name} who liked to play outside.",
        f"{kid.name} was a {rng.choice(['kind', 'happy', 'curious'])} {kind}.",
    ])


def _lost_toy(rng: random.Random) -> list[str]:
    kid = _kid(rng)
    friend = _kid(rng, avoid=kid.name)
    toy = f"{rng.choice(COLORS)} {rng.choice(TOYS)}"
    place, acts, spots = rng.choice(PLACES)
    first, second, found = rng.sample(spots, 3)
    return [
        _intro(rng, kid), f"{_cap(kid.he)} had a {toy}.",
        f"{kid.name} loved {kid.his} {toy.split(' ', 1)[1]} very much.",
        f"One day, {kid.name} took the {toy} to the {place}.",
        f"{_cap(kid.he)} {rng.choice(acts)} and {rng.choice(acts)}.",
        f"But when {kid.he} wanted to go home, the {toy} was gone!",
        f"{kid.name} was very {rng.choice(FEELINGS_BAD)}.",
        f"{_cap(kid.he)} looked {first}. {_cap(kid.he)} looked {second}.",
        f"Then {kid.his} friend {friend.name} came to help.",
        f'"Is this your {toy}?" {friend.name} asked.',
        f"It was {found} all the time!" if rng.random() < 0.3 else
        f"{friend.name} had found it {found}.",
        f'"Thank you, {friend.name}!" said {kid.name}.',
        f"{kid.name} and {friend.name} played with the {toy} until the sun went down.",
    ]


def _new_friend(rng: random.Random) -> list[str]:
    kid = _kid(rng)
    animal, sound = rng.choice(ANIMALS)
    place, acts, spots = rng.choice(PLACES)
    trouble, fix = rng.choice([
        ("hungry", f"gave it a {rng.choice(FOODS)}"),
        ("stuck", "pulled it out very slowly"),
        ("lost", "helped it find its home"),
        ("cold", "wrapped it in a warm blanket"),
    ])
    return [
        _intro(rng, kid), f"One day, {kid.he} went to the {place}.",
        f"{_cap(kid.he)} {rng.choice(acts)}.",
        f"Then {kid.name} saw a {rng.choice(SIZES)} {animal} {rng.choice(spots)}.",
        f"The {animal} was {trouble}. It looked {rng.choice(FEELINGS_BAD)}.",
        f'"Do not be sad, little {animal}," said {kid.name}. "I will help you."',
        f"{kid.name} {fix}.",
        f'The {animal} said, "{sound}!" It was very {rng.choice(FEELINGS_GOOD)}.',
        f"From that day on, {kid.name} and the {animal} were best friends.",
        "Being kind is the best thing to do." if rng.random() < 0.5 else
        f"They played together at the {place} every day.",
    ]


def _sharing(rng: random.Random) -> list[str]:
    kid = _kid(rng)
    friend = _kid(rng, avoid=kid.name)
    toy = f"{rng.choice(COLORS)} {rng.choice(TOYS)}"
    helper = rng.choice(HELPERS)
    return [
        _intro(rng, kid),
        f"{kid.name} and {friend.name} were playing in the {rng.choice(PLACES)[0]}.",
        f"They both saw a {toy}. They both wanted it.",
        f'"It is mine!" said {kid.name}. "No, it is mine!" said {friend.name}.',
        f"They pulled and pulled. Soon they were both {rng.choice(FEELINGS_BAD)}.",
        f"{kid.name}'s {helper} came and said, \"You can share the {toy}. You can take turns.\"",
        f"So {kid.name} played with the {toy} first, and then {friend.name} played with it.",
        "They laughed and had a lot of fun.",
        "Sharing made the day more fun.",
    ]


def _try_again(rng: random.Random) -> list[str]:
    kid = _kid(rng)
    skill, attempt, fail = rng.choice(SKILLS)
    helper = rng.choice(HELPERS)
    return [
        _intro(rng, kid), f"{kid.name} wanted to {skill}.",
        f"{_cap(kid.he)} {attempt}, but {kid.he} {fail}.",
        f"{kid.name} was {rng.choice(FEELINGS_BAD)}. \"I can not do it,\" {kid.he} said.",
        f'{_cap(kid.his)} {helper} smiled and said, "Do not give up. Try again."',
        f"So {kid.name} tried again. And again.",
        f"At last, {kid.he} could {skill}!",
        f"{kid.name} felt very proud. {_cap(kid.his)} {helper} "
        + rng.choice(["clapped.", "clapped and cheered."]),
        "If you keep trying, you can do it.",
    ]


def _rainy_day(rng: random.Random) -> list[str]:
    kid = _kid(rng)
    helper = rng.choice(HELPERS)
    place = rng.choice(PLACES)[0]
    game = rng.choice(GAMES_INSIDE)
    return [
        _intro(rng, kid), f"{kid.name} wanted to go to the {place}.",
        "But it was raining outside. The rain went drip, drip, drip.",
        f"{kid.name} was {rng.choice(FEELINGS_BAD)}.",
        f'{_cap(kid.his)} {helper} said, "We can have fun inside."',
        f"So they {game}.",
        f"It was so much fun that {kid.name} forgot about the rain.",
        f"Then the sun came out and {kid.name} saw a big rainbow.",
        f"They went to the {place} together. {kid.name} was very {rng.choice(FEELINGS_GOOD)}.",
    ]


def _night_noise(rng: random.Random) -> list[str]:
    kid = _kid(rng)
    helper = rng.choice(HELPERS)
    animal, sound = rng.choice(ANIMALS)
    return [
        _intro(rng, kid), f"One night, {kid.name} was in bed.",
        f"{_cap(kid.he)} heard {rng.choice(NOISES)}.",
        f"{kid.name} was scared. {_cap(kid.he)} ran to {kid.his} {helper}.",
        f'"There is something outside!" {kid.he} said.',
        f"{_cap(kid.his)} {helper} took a light and they looked outside together.",
        f'It was only a little {animal}! "{sound}," said the {animal}.',
        f"{kid.name} laughed. {_cap(kid.he)} was not scared anymore.",
        f"{_cap(kid.he)} gave the {animal} some milk and went back to bed.",
    ]


PLOTS: list[Callable[[random.Random], list[str]]] = [
    _lost_toy, _new_friend, _sharing, _try_again, _rainy_day, _night_noise]


def generate_story(rng: random.Random) -> str:
    """One story: a random plot, its sentences in paragraphs of two to four."""
    sentences = rng.choice(PLOTS)(rng)
    paragraphs, i = [], 0
    while i < len(sentences):
        n = rng.randint(2, 4)
        paragraphs.append(" ".join(sentences[i:i + n]))
        i += n
    return "\n".join(paragraphs)


def generate_stories(num_bytes: int, seed: int) -> str:
    """Whole stories, each followed by an <|endoftext|> line, until there are num_bytes or more."""
    rng = random.Random(seed)
    stories: list[str] = []
    total = 0
    while total < num_bytes:
        story = generate_story(rng)
        stories.append(story)
        total += len(story) + len(SEPARATOR)  # ASCII only: characters are bytes
    return "".join(story + SEPARATOR for story in stories)
