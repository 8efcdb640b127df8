"""Generate llmjepa's bundled sample data: multi-step arithmetic word problems.

Writes llmjepa/assets/arith_train.jsonl and llmjepa/assets/arith_eval.jsonl in the upstream
"messages" format. The assistant answer has 2 to 5 steps separated by a blank line ("\\n\\n",
the step separator Step-JEPA splits on); each step is one sentence with one equation, and the
last step ends with "The answer is N.". Every equation is re-evaluated before it is written,
so a wrong template cannot ship wrong arithmetic.

    python scripts/make_sample_data.py          # (re)write both files
    python scripts/make_sample_data.py --check  # exit 1 if the files differ from what it would write
"""

import argparse
import json
import operator
import random
import re
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "llmjepa" / "assets"
TRAIN_FILE = DATA_DIR / "arith_train.jsonl"
EVAL_FILE = DATA_DIR / "arith_eval.jsonl"
N_TRAIN = 512
N_EVAL = 64
SEED = 20240917
STEP_SEPARATOR = "\n\n"

SYSTEM_PROMPTS = (
    "Solve the math word problem step by step.",
    "Answer the math question, show steps.",
    "You are a careful math tutor. Work through the problem one step at a time.",
)
NAMES = (
    "Tom", "Mia", "Leo", "Sara", "Ben", "Anna", "Omar", "Lily", "Raj", "Emma", "Noah", "Zoe",
    "Liam", "Chloe", "Ivan", "Nina", "Kai", "Ava", "Sam", "Grace", "Luis", "Maya", "Owen", "Ella",
)  # fmt: skip
FRUITS = ("apples", "oranges", "pears", "lemons", "peaches", "plums")
CANDIES = ("candies", "cookies", "stickers", "marbles", "cards", "crayons")
GOODS = (
    ("notebook", "notebooks"),
    ("pen", "pens"),
    ("ticket", "tickets"),
    ("sandwich", "sandwiches"),
    ("toy car", "toy cars"),
)
VEHICLES = ("train", "bus", "car", "truck", "bike")
PLANTS = ("tomato plants", "sunflowers", "rose bushes", "pepper plants", "tulips")
OPERATORS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
EQUATION = re.compile(r"(\d+(?: [-+*/] \d+)+) = (\d+)")


def calc(expression: str) -> int:
    """Evaluate 'a op b op c' left to right, exactly; it must give a whole number."""
    tokens = expression.split(" ")
    value = Fraction(int(tokens[0]))
    for op, operand in zip(tokens[1::2], tokens[2::2]):
        b = Fraction(int(operand))
        value = OPERATORS[op](value, b)
    assert value.denominator == 1 and value >= 0, f"{expression} = {value}: not a whole number"
    return int(value)


def eq(expression: str, expected: int) -> str:
    """The text 'expression = value', after checking that the template's value is right."""
    value = calc(expression)
    assert value == expected, f"{expression} = {value}, template says {expected}"
    return f"{expression} = {value}"


def final(sentence: str, answer: int) -> str:
    return f"{sentence} The answer is {answer}."


def buying(rng: random.Random) -> tuple[str, list[str]]:
    name = rng.choice(NAMES)
    singular, plural = rng.choice(GOODS)
    packs, per_pack, price = rng.randint(2, 6), rng.choice((4, 5, 6, 10, 12)), rng.randint(2, 9)
    items, cost = packs * per_pack, packs * per_pack * price
    question = (
        f"{name} buys {packs} packs of {plural}. Each pack has {per_pack} {plural} and each {singular} costs ${price}."
    )
    steps = [
        f"{name} buys {packs} packs of {per_pack}, so {name} gets {eq(f'{packs} * {per_pack}', items)} {plural}.",
        f"Each {singular} costs ${price}, so they cost {eq(f'{items} * {price}', cost)} dollars.",
    ]
    if rng.random() < 0.5:
        return question + " How much does it cost in dollars?", steps[:1] + [final(steps[1], cost)]
    paid = (cost // 50 + 1) * 50
    change = paid - cost
    question += f" {name} pays with ${paid}. How much change does {name} get?"
    return question, steps + [final(f"The change is {eq(f'{paid} - {cost}', change)} dollars.", change)]


def sharing(rng: random.Random) -> tuple[str, list[str]]:
    name, friend_count = rng.choice(NAMES), rng.randint(2, 6)
    thing = rng.choice(CANDIES)
    bags, per_bag = rng.randint(3, 9), rng.randint(6, 15)
    total = bags * per_bag
    each = rng.randint(1, max(1, total // friend_count - 1))
    given = each * friend_count
    left = total - given
    question = (
        f"{name} has {bags} bags with {per_bag} {thing} in each bag. {name} gives {each} {thing} to each of "
        f"{friend_count} friends. How many {thing} does {name} have left?"
    )
    steps = [
        f"{name} starts with {eq(f'{bags} * {per_bag}', total)} {thing}.",
        f"The friends get {eq(f'{each} * {friend_count}', given)} {thing} in all.",
        final(f"So {name} has {eq(f'{total} - {given}', left)} {thing} left.", left),
    ]
    return question, steps


def splitting_bill(rng: random.Random) -> tuple[str, list[str]]:
    people = rng.randint(2, 6)
    pizzas, price = rng.randint(2, 5), rng.randint(8, 15)
    food = pizzas * price
    tip = people - food % people + people * rng.randint(0, 2)  # makes the total divide evenly
    total = food + tip
    share = total // people
    question = (
        f"{people} friends order {pizzas} pizzas at ${price} each and leave a ${tip} tip. They split the bill "
        "equally. How much does each friend pay in dollars?"
    )
    steps = [
        f"The pizzas cost {eq(f'{pizzas} * {price}', food)} dollars.",
        f"With the tip the bill is {eq(f'{food} + {tip}', total)} dollars.",
        final(f"Each friend pays {eq(f'{total} / {people}', share)} dollars.", share),
    ]
    return question, steps


def speeds(rng: random.Random) -> tuple[str, list[str]]:
    vehicle = rng.choice(VEHICLES)
    legs = [(rng.choice((20, 30, 40, 45, 50, 60, 80)), rng.randint(1, 5)) for _ in range(rng.randint(1, 3))]
    parts = [f"{speed} km per hour for {hours} hours" for speed, hours in legs]
    question = f"A {vehicle} travels at " + ", then at ".join(parts) + ". How many kilometers does it travel in total?"
    distances = [speed * hours for speed, hours in legs]
    ordinals = ("first", "second", "third")
    steps = [
        f"In the {ordinals[k]} part it goes {eq(f'{speed} * {hours}', distances[k])} km."
        for k, (speed, hours) in enumerate(legs)
    ]
    total = sum(distances)
    if len(legs) == 1:
        question = question.replace("How many", "Then it comes back the same way at the same speed. How many")
        steps.append(final(f"Going there and back it travels {eq(f'{total} * 2', total * 2)} km.", total * 2))
        return question, steps
    expression = " + ".join(str(d) for d in distances)
    steps.append(final(f"In total it travels {eq(expression, total)} km.", total))
    return question, steps


def ages(rng: random.Random) -> tuple[str, list[str]]:
    child, sibling = rng.sample(NAMES, 2)
    age, times, gap, years = rng.randint(3, 12), rng.randint(2, 4), rng.randint(18, 30), rng.randint(2, 10)
    sibling_age = age * times
    parent_age = sibling_age + gap
    future = parent_age + years
    question = (
        f"{child} is {age} years old. {sibling} is {times} times as old as {child}. Their mother is {gap} years "
        f"older than {sibling}. How old will their mother be in {years} years?"
    )
    steps = [
        f"{sibling} is {eq(f'{age} * {times}', sibling_age)} years old.",
        f"Their mother is {eq(f'{sibling_age} + {gap}', parent_age)} years old now.",
        final(f"In {years} years she will be {eq(f'{parent_age} + {years}', future)} years old.", future),
    ]
    return question, steps


def savings(rng: random.Random) -> tuple[str, list[str]]:
    name = rng.choice(NAMES)
    weekly, weeks = rng.choice((5, 10, 12, 15, 20, 25)), rng.randint(4, 12)
    saved = weekly * weeks
    spent = rng.randint(10, saved - 5)
    left = saved - spent
    question = f"{name} saves ${weekly} every week for {weeks} weeks, then spends ${spent} on a game."
    steps = [
        f"{name} saves {eq(f'{weekly} * {weeks}', saved)} dollars.",
        f"After buying the game {name} has {eq(f'{saved} - {spent}', left)} dollars.",
    ]
    if rng.random() < 0.5:
        return question + f" How much money does {name} have left?", [steps[0], final(steps[1], left)]
    gift = rng.randint(5, 40)
    total = left + gift
    question += f" Then {name} gets ${gift} as a gift. How much money does {name} have now?"
    return question, steps + [final(f"With the gift {name} has {eq(f'{left} + {gift}', total)} dollars.", total)]


def baking(rng: random.Random) -> tuple[str, list[str]]:
    name = rng.choice(NAMES)
    per_cake, carton = rng.randint(2, 4), rng.choice((6, 12))
    cartons = rng.randint(1, 4)
    eggs = cartons * carton
    while eggs % per_cake:
        per_cake -= 1  # ends at 1 at worst, which always divides
    cakes = eggs // per_cake
    question = (
        f"A cake needs {per_cake} eggs. {name} buys {cartons} cartons of {carton} eggs and uses all of them for "
        f"cakes. How many cakes does {name} bake?"
    )
    steps = [
        f"{name} has {eq(f'{cartons} * {carton}', eggs)} eggs.",
        final(f"{name} bakes {eq(f'{eggs} / {per_cake}', cakes)} cakes.", cakes),
    ]
    return question, steps


def garden(rng: random.Random) -> tuple[str, list[str]]:
    plant = rng.choice(PLANTS)
    rows, per_row, pots = rng.randint(3, 9), rng.randint(4, 12), rng.randint(2, 5)
    total = rows * per_row
    alive = pots * rng.randint(1, (total - 1) // pots)  # splits evenly into the pots, and the storm ruins some
    lost = total - alive
    per_pot = alive // pots
    question = (
        f"A garden has {rows} rows of {per_row} {plant}. A storm ruins {lost} of them. The rest are moved into "
        f"{pots} large pots with the same number in each pot. How many {plant} go in each pot?"
    )
    steps = [
        f"The garden has {eq(f'{rows} * {per_row}', total)} {plant}.",
        f"After the storm {eq(f'{total} - {lost}', alive)} are left.",
        final(f"Each pot gets {eq(f'{alive} / {pots}', per_pot)} {plant}.", per_pot),
    ]
    return question, steps


def reading(rng: random.Random) -> tuple[str, list[str]]:
    name = rng.choice(NAMES)
    per_day, days, rest_days = rng.choice((10, 12, 15, 20, 25)), rng.randint(2, 6), rng.randint(2, 5)
    read = per_day * days
    rest_rate = rng.randint(5, 30)
    remaining = rest_rate * rest_days
    pages = read + remaining
    question = (
        f"A book has {pages} pages. {name} reads {per_day} pages a day for {days} days. {name} wants to finish the "
        f"book in {rest_days} more days. How many pages a day must {name} read?"
    )
    steps = [
        f"{name} has read {eq(f'{per_day} * {days}', read)} pages.",
        f"There are {eq(f'{pages} - {read}', remaining)} pages left.",
        final(f"{name} must read {eq(f'{remaining} / {rest_days}', rest_rate)} pages a day.", rest_rate),
    ]
    return question, steps


def wages(rng: random.Random) -> tuple[str, list[str]]:
    name = rng.choice(NAMES)
    rate, hours, days = rng.randint(8, 20), rng.randint(3, 8), rng.randint(2, 6)
    daily = rate * hours
    earned = daily * days
    bonus = rng.choice((0, 10, 25, 50))
    question = f"{name} earns ${rate} an hour and works {hours} hours a day for {days} days."
    steps = [
        f"Each day {name} earns {eq(f'{rate} * {hours}', daily)} dollars.",
        f"Over {days} days that is {eq(f'{daily} * {days}', earned)} dollars.",
    ]
    if not bonus:
        return question + f" How much does {name} earn?", [steps[0], final(steps[1], earned)]
    total = earned + bonus
    question += f" {name} also gets a ${bonus} bonus. How much does {name} earn in total?"
    return question, steps + [final(f"With the bonus that is {eq(f'{earned} + {bonus}', total)} dollars.", total)]


def fruit_stand(rng: random.Random) -> tuple[str, list[str]]:
    name = rng.choice(NAMES)
    fruit = rng.choice(FRUITS)
    boxes, per_box, bag = rng.randint(2, 8), rng.choice((6, 8, 10, 12, 24)), rng.choice((2, 3, 4, 5))
    total = boxes * per_box
    left = bag * rng.randint(1, total // (2 * bag))
    sold = total - left
    sold_morning = rng.randint(1, sold - 1)
    sold_afternoon = sold - sold_morning
    question = (
        f"{name} has {boxes} boxes of {per_box} {fruit}. {name} sells {sold_morning} in the morning and "
        f"{sold_afternoon} in the afternoon, then puts the rest into bags of {bag}. How many bags does {name} fill?"
    )
    steps = [
        f"{name} has {boxes} boxes of {per_box}, so {name} has {eq(f'{boxes} * {per_box}', total)} {fruit}.",
        f"{name} sells {eq(f'{sold_morning} + {sold_afternoon}', sold)} {fruit} in all.",
        f"That leaves {eq(f'{total} - {sold}', left)} {fruit}.",
        final(f"{name} fills {eq(f'{left} / {bag}', left // bag)} bags.", left // bag),
    ]
    return question, steps


def rectangle(rng: random.Random) -> tuple[str, list[str]]:
    length, width = rng.randint(5, 30), rng.randint(3, 20)
    half = length + width
    perimeter = 2 * half
    post_gap = rng.choice((1, 2))  # the perimeter is even, so either gap fits exactly
    posts = perimeter // post_gap
    cost = rng.randint(2, 9)
    question = (
        f"A rectangular yard is {length} meters long and {width} meters wide. A fence goes all around it with a "
        f"post every {'meter' if post_gap == 1 else f'{post_gap} meters'}, and each post costs ${cost}. "
        "How much do the posts cost in dollars?"
    )
    steps = [
        f"Length plus width is {eq(f'{length} + {width}', half)} meters.",
        f"The fence is {eq(f'2 * {half}', perimeter)} meters long.",
        f"It needs {eq(f'{perimeter} / {post_gap}', posts)} posts.",
        final(f"The posts cost {eq(f'{posts} * {cost}', posts * cost)} dollars.", posts * cost),
    ]
    return question, steps


def school_trip(rng: random.Random) -> tuple[str, list[str]]:
    classes, students, teachers = rng.randint(3, 6), rng.randint(18, 30), rng.randint(2, 3)
    pupils = classes * students
    adults = classes * teachers
    people = pupils + adults
    bus_size = rng.choice((30, 40, 50))
    buses = -(-people // bus_size)  # enough buses for everyone
    seats = buses * bus_size
    empty = seats - people
    question = (
        f"A school trip has {classes} classes of {students} students, and each class brings {teachers} teachers. "
        f"They take {buses} buses with {bus_size} seats each. How many seats are empty?"
    )
    steps = [
        f"There are {eq(f'{classes} * {students}', pupils)} students.",
        f"There are {eq(f'{classes} * {teachers}', adults)} teachers.",
        f"So {eq(f'{pupils} + {adults}', people)} people go on the trip.",
        f"The buses have {eq(f'{buses} * {bus_size}', seats)} seats.",
        final(f"That leaves {eq(f'{seats} - {people}', empty)} empty seats.", empty),
    ]
    return question, steps


TEMPLATES: tuple[Callable[[random.Random], tuple[str, list[str]]], ...] = (
    buying, sharing, splitting_bill, speeds, ages, savings, baking,
    garden, reading, wages, fruit_stand, rectangle, school_trip,
)  # fmt: skip


def check_answer(steps: list[str]) -> None:
    """Every equation holds and the stated answer is the last equation's result."""
    assert 2 <= len(steps) <= 5, steps
    for step in steps:
        assert "\n" not in step and EQUATION.search(step), f"a step is one line with an equation: {step!r}"
    equations = EQUATION.findall(" ".join(steps))
    for expression, result in equations:
        assert calc(expression) == int(result), expression
    answer = re.fullmatch(r".* The answer is (\d+)\.", steps[-1])
    assert answer is not None and int(answer.group(1)) == int(equations[-1][1]), steps[-1]


def make_example(rng: random.Random) -> dict:
    template = rng.choice(TEMPLATES)
    question, steps = template(rng)
    assert "{" not in question + "".join(steps), f"unfilled placeholder in {template.__name__}"
    check_answer(steps)
    system = rng.choice(SYSTEM_PROMPTS)
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
        {"role": "assistant", "content": STEP_SEPARATOR.join(steps)},
    ]
    return {"messages": messages}


def make_splits() -> tuple[list[dict], list[dict]]:
    """Train then eval examples from one seeded stream; no question appears twice."""
    rng = random.Random(SEED)
    seen: set[str] = set()
    examples: list[dict] = []
    while len(examples) < N_TRAIN + N_EVAL:
        example = make_example(rng)
        question = example["messages"][1]["content"]
        if question not in seen:
            seen.add(question)
            examples.append(example)
    return examples[:N_TRAIN], examples[N_TRAIN:]


def to_jsonl(examples: list[dict]) -> bytes:
    return "".join(json.dumps(e, ensure_ascii=True) + "\n" for e in examples).encode("utf-8")


def write_or_check(outputs: dict[Path, bytes], script: str) -> int:
    """The generators' command line: write the files, or with --check exit 1 naming each one that
    differs from what `script` would write (tests run --check so committed data cannot drift)."""
    parser = argparse.ArgumentParser(description=f"(re)write the data files that {script} generates")
    parser.add_argument("--check", action="store_true", help="compare with the committed files instead of writing")
    args = parser.parse_args()
    if args.check:
        stale = [path for path, data in outputs.items() if not path.is_file() or path.read_bytes() != data]
        for path in stale:
            print(f"{path}: differs from what {script} generates; rerun it", file=sys.stderr)
        return 1 if stale else 0
    for path, data in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path} ({len(data)} bytes)")
    return 0


def main() -> int:
    train, evaluation = make_splits()
    return write_or_check({TRAIN_FILE: to_jsonl(train), EVAL_FILE: to_jsonl(evaluation)}, "scripts/make_sample_data.py")


if __name__ == "__main__":
    sys.exit(main())
