"""A tool-use training set the project writes itself: teaching a 135M model when to act, not just how.

Constrained decoding already makes every call *well formed* (``lab.llm.constrained``). What the
embedded model cannot do is *decide*: offered a fitting tool under ``tool_choice="auto"`` it answers
in prose; asked to stop, it calls again. Those are behaviours, and behaviours are taught with
examples (the recipe of xLAM, TinyAgent and Hermes function-calling data), so this module generates
them, seeded and checkable, from four sources:

(a) **Synthetic function signatures** (``FUNCTIONS``): typed, enum, nested and optional parameters,
    requests rendered from templates in four families (imperative, question, polite, indirect), the
    gold call fixed by the slots the template used.
(b) **The project's own tools** (``phase13_react.research_tools``): calculator, the Phase 8 KV-cache
    formula, the committed-result reader, the notes search, in one- and two-step trajectories whose
    observations come from *running the real tools*.
(c) **Irrelevance**: a request that no offered tool fits (another function's request, or plain chat);
    the right action is to answer or decline in text.
(d) **The final turn**: an observation turned into a short answer that states the observed value.

Every example is rendered two ways, because agents and chat clients ask differently: ``auto`` (tools
offered, ``tool_choice="auto"``; the model either calls or writes text) and ``agent`` (the Phase 13
loop's shape: ``tool_choice="required"`` with a ``final_answer`` tool; the model calls a tool or
``final_answer``). The training rows are the exact prompts ``lab.llm.local`` builds (``chat_turns``),
so what the model learns is what it will be asked.

**Held-out splits, never mixed into training** (``SPLITS``): ``heldout_template`` (the indirect
family of requests), ``heldout_function`` (functions whose names and schemas training never shows),
``heldout_tool`` (the notes search, a project tool training never shows), ``heldout_chat`` (chat
requests written apart from the training ones) and ``heldout_multistep`` (project-tool tasks in
wordings training never shows, run end to end). No external benchmark's items are used, for
training or for choosing any setting. Result-reader examples read only a fixed list of deterministic
Phase 8 metrics (``READER_METRICS``) that no research task asks about, so regenerating the results
cannot change the data and ``phase13.research_agent`` stays a held-out measure.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.llm.base import ToolCall
from lab.llm.constrained import render_tool_call, tools_prompt
from lab.llm.local import chat_turns
from phase13_react.loop import FINAL_ANSWER, FINAL_ANSWER_TOOL, NATIVE_SYSTEM
from phase13_react.research_tools import RESEARCH_TOOLS
from phase13_react.tasks import load_tasks
from phase13_react.tools import Toolbox

GENERATOR_VERSION = "tool_use_data/1"
FAMILIES = ("imperative", "question", "polite", "indirect")
TRAIN_FAMILIES = FAMILIES[:3]
SPLITS = ("train", "heldout_template", "heldout_function", "heldout_tool", "heldout_chat", "heldout_multistep")
MODES = ("auto", "agent")
CHAT_SYSTEMS = (None, "You are a helpful assistant.", "You are a concise assistant. Answer briefly.")


# --- (a) synthetic functions -------------------------------------------------------------------------
@dataclass(frozen=True)
class Function:
    """One synthetic function: its schema, how to sample arguments, request templates per family, a
    simulated result and the sentence that reports it, and what it does (for a decline)."""

    name: str
    description: str
    properties: dict[str, Any]
    required: tuple[str, ...]
    sample: Callable[[random.Random], dict[str, Any]]  # every argument, optional ones included
    templates: dict[str, tuple[str, ...]]  # family -> templates; a template's slots are the call's arguments
    result: Callable[[dict[str, Any], random.Random], dict[str, Any]]
    answer: str  # formatted with arguments and result
    purpose: str  # "check the weather"
    heldout: bool = False

    def schema(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": {"type": "object", "properties": self.properties, "required": list(self.required)},
        }


def _s(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _i(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "integer", "description": description, **extra}


def _n(description: str) -> dict[str, Any]:
    return {"type": "number", "description": description}


CITIES = (
    "Paris",
    "Tokyo",
    "Lisbon",
    "Nairobi",
    "Toronto",
    "Berlin",
    "Lima",
    "Oslo",
    "Seoul",
    "Austin",
    "Madrid",
    "Cairo",
    "Dublin",
    "Hanoi",
    "Perth",
    "Denver",
    "Milan",
    "Quito",
    "Riga",
    "Accra",
)
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lea")
DATES = (
    "2027-01-14",
    "2027-02-03",
    "2027-03-22",
    "2027-04-09",
    "2027-05-30",
    "2027-06-18",
    "2027-07-07",
    "2027-08-25",
    "2027-09-12",
    "2027-10-01",
    "2027-11-19",
    "2027-12-05",
)
CURRENCIES = ("USD", "EUR", "JPY", "GBP", "CHF", "CAD", "INR", "BRL")
LANGUAGES = ("French", "Spanish", "German", "Japanese", "Italian", "Portuguese")
SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "SAP", "ASML", "TSM")
CUISINES = ("thai", "italian", "mexican", "vegan", "sushi", "ethiopian", "lebanese", "korean")
TOPICS = ("budget review", "sprint planning", "design sync", "hiring panel", "quarterly report", "launch retro")
SONGS = ("Clair de Lune", "Blue in Green", "Hey Jude", "Bohemian Rhapsody", "Take Five", "Dancing Queen")


def _pick(rng: random.Random, pool: tuple, k: int = 1):
    return rng.sample(pool, k) if k > 1 else rng.choice(pool)


FUNCTIONS: tuple[Function, ...] = (
    Function(
        "get_weather",
        "Get the current weather for a city.",
        {"city": _s("City name"), "unit": _s("Temperature unit", enum=["celsius", "fahrenheit"])},
        ("city",),
        lambda r: {"city": _pick(r, CITIES), "unit": _pick(r, ("celsius", "fahrenheit"))},
        {
            "imperative": ("Get the weather in {city}.", "Check the current weather in {city} in {unit}."),
            "question": ("What's the weather like in {city} right now?", "How warm is it in {city} in {unit}?"),
            "polite": (
                "Could you please look up the weather in {city}?",
                "Would you check the weather in {city} for me, in {unit}?",
            ),
            "indirect": (
                "I'm heading out in {city} soon and don't know whether to bring a jacket.",
                "My sister lives in {city}; I wonder what the weather is doing there (she thinks in {unit}).",
            ),
        },
        lambda a, r: {"temperature": r.randint(-5, 35), "condition": _pick(r, ("sunny", "cloudy", "rainy", "windy"))},
        "It is {temperature} degrees and {condition} in {city}.",
        "check the weather",
    ),
    Function(
        "convert_currency",
        "Convert an amount of money from one currency to another.",
        {
            "amount": _n("Amount to convert"),
            "from_currency": _s("ISO code to convert from", enum=list(CURRENCIES)),
            "to_currency": _s("ISO code to convert to", enum=list(CURRENCIES)),
        },
        ("amount", "from_currency", "to_currency"),
        lambda r: dict(
            zip(("from_currency", "to_currency"), _pick(r, CURRENCIES, 2)),
            amount=r.choice((20, 75, 150, 300, 1200, 49.5)),
        ),
        {
            "imperative": ("Convert {amount} {from_currency} to {to_currency}.",),
            "question": ("How much is {amount} {from_currency} in {to_currency}?",),
            "polite": ("Please convert {amount} {from_currency} into {to_currency}.",),
            "indirect": (
                "I have {amount} {from_currency} left over from my trip and need to know what that is in "
                "{to_currency}.",
            ),
        },
        lambda a, r: {"converted": round(a["amount"] * r.uniform(0.5, 1.8), 2)},
        "{amount} {from_currency} is {converted} {to_currency}.",
        "convert currencies",
    ),
    Function(
        "search_flights",
        "Search for flights between two cities on a date.",
        {
            "origin": _s("Departure city"),
            "destination": _s("Arrival city"),
            "date": _s("Date, YYYY-MM-DD"),
            "passengers": _i("Number of passengers", minimum=1, maximum=9),
            "cabin": _s("Cabin class", enum=["economy", "premium", "business"]),
        },
        ("origin", "destination", "date"),
        lambda r: dict(
            zip(("origin", "destination"), _pick(r, CITIES, 2)),
            date=_pick(r, DATES),
            passengers=r.randint(1, 5),
            cabin=_pick(r, ("economy", "premium", "business")),
        ),
        {
            "imperative": (
                "Find flights from {origin} to {destination} on {date}.",
                "Search {cabin} flights from {origin} to {destination} on {date} for {passengers} people.",
            ),
            "question": (
                "Are there flights from {origin} to {destination} on {date}?",
                "Which flights go from {origin} to {destination} on {date} for {passengers} passengers?",
            ),
            "polite": ("Could you search for flights from {origin} to {destination} on {date}, please?",),
            "indirect": ("We are {passengers} people who need to get from {origin} to {destination} on {date}.",),
        },
        lambda a, r: {"flights": r.randint(2, 9), "cheapest_usd": r.randint(90, 900)},
        "I found {flights} flights from {origin} to {destination} on {date}; the cheapest costs {cheapest_usd} USD.",
        "search for flights",
    ),
    Function(
        "set_timer",
        "Start a countdown timer.",
        {"minutes": _i("Length of the timer in minutes", minimum=1, maximum=600), "label": _s("Optional label")},
        ("minutes",),
        lambda r: {
            "minutes": r.choice((3, 5, 10, 12, 25, 45, 90)),
            "label": _pick(r, ("tea", "pasta", "laundry", "break", "oven")),
        },
        {
            "imperative": ("Set a timer for {minutes} minutes.", "Start a {minutes} minute timer labelled {label}."),
            "question": ("Can you time {minutes} minutes for me?",),
            "polite": ("Please set a {minutes}-minute timer called {label}.",),
            "indirect": ("The {label} needs {minutes} minutes and I always forget to check on it.",),
        },
        lambda a, r: {"status": "started"},
        "Your {minutes}-minute timer is {status}.",
        "set timers",
    ),
    Function(
        "send_email",
        "Send an email.",
        {"to": _s("Recipient name or address"), "subject": _s("Subject line"), "body": _s("Message text")},
        ("to", "subject", "body"),
        lambda r: {
            "to": _pick(r, NAMES),
            "subject": _pick(r, TOPICS),
            "body": _pick(
                r,
                (
                    "I will be 10 minutes late.",
                    "The notes are attached.",
                    "Can we move it to Friday?",
                    "Thanks for your help today.",
                ),
            ),
        },
        {
            "imperative": ("Email {to} with the subject '{subject}' saying: {body}",),
            "question": ("Can you send {to} an email titled '{subject}' that says: {body}",),
            "polite": ("Please write to {to}, subject '{subject}', and tell them: {body}",),
            "indirect": ("{to} is waiting to hear from me about the {subject}; the message is: {body}",),
        },
        lambda a, r: {"status": "sent"},
        "Your email to {to} is {status}.",
        "send email",
    ),
    Function(
        "create_event",
        "Create a calendar event.",
        {
            "title": _s("Event title"),
            "date": _s("Date, YYYY-MM-DD"),
            "time": _s("Start time, HH:MM"),
            "attendees": {"type": "array", "items": {"type": "string"}, "description": "People to invite"},
        },
        ("title", "date", "time"),
        lambda r: {
            "title": _pick(r, TOPICS),
            "date": _pick(r, DATES),
            "time": _pick(r, ("09:00", "10:30", "14:00", "16:45")),
            "attendees": _pick(r, NAMES, 2),
        },
        {
            "imperative": (
                "Create an event '{title}' on {date} at {time}.",
                "Schedule '{title}' on {date} at {time} with {attendees}.",
            ),
            "question": ("Can you put '{title}' in my calendar for {date} at {time}?",),
            "polite": ("Please add '{title}' to the calendar on {date} at {time} and invite {attendees}.",),
            "indirect": ("We agreed to hold the {title} on {date} at {time}; {attendees} will join.",),
        },
        lambda a, r: {"event_id": f"ev{r.randint(100, 999)}"},
        "I created '{title}' on {date} at {time} (event {event_id}).",
        "manage the calendar",
    ),
    Function(
        "get_stock_price",
        "Get the latest price of a stock by its ticker symbol.",
        {"symbol": _s("Ticker symbol")},
        ("symbol",),
        lambda r: {"symbol": _pick(r, SYMBOLS)},
        {
            "imperative": ("Get the stock price of {symbol}.",),
            "question": ("What is {symbol} trading at?",),
            "polite": ("Could you tell me the current price of {symbol} shares?",),
            "indirect": ("I'm thinking of selling my {symbol} shares if the price is good today.",),
        },
        lambda a, r: {"price_usd": round(r.uniform(20, 900), 2)},
        "{symbol} is trading at {price_usd} USD.",
        "look up stock prices",
    ),
    Function(
        "translate_text",
        "Translate text into another language.",
        {"text": _s("Text to translate"), "target_language": _s("Language", enum=list(LANGUAGES))},
        ("text", "target_language"),
        lambda r: {
            "text": _pick(r, ("good morning", "where is the station", "thank you very much", "see you soon")),
            "target_language": _pick(r, LANGUAGES),
        },
        {
            "imperative": ("Translate '{text}' into {target_language}.",),
            "question": ("How do you say '{text}' in {target_language}?",),
            "polite": ("Please translate '{text}' to {target_language}.",),
            "indirect": ("I want to greet my {target_language}-speaking host properly with '{text}'.",),
        },
        lambda a, r: {"translation": "…"},
        "Here is '{text}' in {target_language}: {translation}",
        "translate text",
    ),
    Function(
        "find_restaurants",
        "Find restaurants in a city by cuisine.",
        {
            "city": _s("City"),
            "cuisine": _s("Type of food"),
            "max_price": _i("Highest price level, 1-4", minimum=1, maximum=4),
        },
        ("city", "cuisine"),
        lambda r: {"city": _pick(r, CITIES), "cuisine": _pick(r, CUISINES), "max_price": r.randint(1, 4)},
        {
            "imperative": (
                "Find {cuisine} restaurants in {city}.",
                "List {cuisine} places in {city} up to price level {max_price}.",
            ),
            "question": ("Where can I eat {cuisine} food in {city}?",),
            "polite": ("Could you find me a {cuisine} restaurant in {city}?",),
            "indirect": ("I'm in {city} tonight and craving {cuisine}, nothing above price level {max_price}.",),
        },
        lambda a, r: {
            "top": f"{_pick(r, ('Casa', 'Little', 'Golden', 'Blue'))} {a['cuisine'].title()}",
            "count": r.randint(3, 12),
        },
        "There are {count} {cuisine} places in {city}; the best rated is {top}.",
        "find restaurants",
    ),
    Function(
        "add_todo",
        "Add a task to the to-do list.",
        {
            "task": _s("What to do"),
            "priority": _s("Priority", enum=["low", "medium", "high"]),
            "due_date": _s("Due date, YYYY-MM-DD"),
        },
        ("task", "priority"),
        lambda r: {
            "task": _pick(r, ("renew passport", "call the plumber", "water the plants", "pay rent", "book dentist")),
            "priority": _pick(r, ("low", "medium", "high")),
            "due_date": _pick(r, DATES),
        },
        {
            "imperative": (
                "Add '{task}' to my to-do list with {priority} priority.",
                "Put '{task}' on my list, {priority} priority, due {due_date}.",
            ),
            "question": ("Can you add '{task}' as a {priority} priority task?",),
            "polite": ("Please add a {priority}-priority to-do: {task}, due {due_date}.",),
            "indirect": ("I keep forgetting to {task}; it's {priority} priority and due {due_date}.",),
        },
        lambda a, r: {"position": r.randint(1, 9)},
        "Added '{task}' ({priority} priority) as item {position}.",
        "manage the to-do list",
    ),
    Function(
        "get_directions",
        "Get directions between two places.",
        {
            "origin": _s("Start"),
            "destination": _s("End"),
            "mode": _s("Travel mode", enum=["walking", "driving", "transit", "cycling"]),
        },
        ("origin", "destination", "mode"),
        lambda r: {
            "origin": _pick(r, ("the museum", "the station", "the airport", "my hotel")),
            "destination": _pick(r, ("the harbour", "the old town", "the stadium", "the university")),
            "mode": _pick(r, ("walking", "driving", "transit", "cycling")),
        },
        {
            "imperative": ("Give me {mode} directions from {origin} to {destination}.",),
            "question": ("How do I get from {origin} to {destination} by {mode}?",),
            "polite": ("Please find a {mode} route from {origin} to {destination}.",),
            "indirect": ("I'm at {origin} and have to reach {destination}; I'll be {mode}.",),
        },
        lambda a, r: {"minutes": r.randint(5, 70)},
        "From {origin} to {destination} by {mode} takes about {minutes} minutes.",
        "give directions",
    ),
    Function(
        "book_hotel",
        "Book a hotel room.",
        {
            "city": _s("City"),
            "check_in": _s("Check-in date, YYYY-MM-DD"),
            "nights": _i("Number of nights", minimum=1, maximum=30),
            "guests": {
                "type": "object",
                "description": "Who is staying",
                "properties": {
                    "adults": {"type": "integer", "minimum": 1},
                    "children": {"type": "integer", "minimum": 0},
                },
                "required": ["adults", "children"],
            },
        },
        ("city", "check_in", "nights", "guests"),
        lambda r: {
            "city": _pick(r, CITIES),
            "check_in": _pick(r, DATES),
            "nights": r.randint(1, 7),
            "guests": {"adults": r.randint(1, 3), "children": r.randint(0, 2)},
        },
        {
            "imperative": ("Book a hotel in {city} from {check_in} for {nights} nights, {guests}.",),
            "question": ("Can you reserve a room in {city} checking in {check_in} for {nights} nights for {guests}?",),
            "polite": ("Please book us a hotel in {city}: {nights} nights from {check_in}, {guests}.",),
            "indirect": ("Our family ({guests}) arrives in {city} on {check_in} and stays {nights} nights.",),
        },
        lambda a, r: {"confirmation": f"H{r.randint(1000, 9999)}"},
        "Your hotel in {city} is booked from {check_in} for {nights} nights (confirmation {confirmation}).",
        "book hotels",
    ),
    Function(
        "calculate_tip",
        "Calculate the tip for a bill.",
        {"bill": _n("Bill amount"), "percent": _n("Tip percentage")},
        ("bill", "percent"),
        lambda r: {"bill": r.choice((18.5, 42, 64.8, 120, 87.25)), "percent": r.choice((10, 15, 18, 20))},
        {
            "imperative": ("Calculate a {percent}% tip on {bill}.",),
            "question": ("What is a {percent}% tip on a {bill} bill?",),
            "polite": ("Could you work out a {percent} percent tip for a bill of {bill}?",),
            "indirect": ("Dinner came to {bill} and I usually leave {percent} percent.",),
        },
        lambda a, r: {"tip": round(a["bill"] * a["percent"] / 100, 2)},
        "A {percent}% tip on {bill} is {tip}.",
        "calculate tips",
    ),
    Function(
        "play_music",
        "Play a song.",
        {"song": _s("Song title"), "shuffle": {"type": "boolean", "description": "Shuffle the queue after it"}},
        ("song",),
        lambda r: {"song": _pick(r, SONGS), "shuffle": r.random() < 0.5},
        {
            "imperative": ("Play {song}.",),
            "question": ("Can you put on {song}?",),
            "polite": ("Please play {song} for me.",),
            "indirect": ("I'd love to hear {song} while I cook.",),
        },
        lambda a, r: {"status": "playing"},
        "Now {status}: {song}.",
        "play music",
    ),
    # --- held out by name: training never shows these functions or their schemas ---
    Function(
        "track_package",
        "Track a parcel by its tracking number.",
        {"tracking_id": _s("Tracking number")},
        ("tracking_id",),
        lambda r: {"tracking_id": f"{_pick(r, ('1Z', 'JD', 'LX'))}{r.randint(100000, 999999)}"},
        {
            "imperative": ("Track package {tracking_id}.",),
            "question": ("Where is my parcel {tracking_id}?",),
            "polite": ("Could you check the status of shipment {tracking_id}?",),
            "indirect": ("My order with tracking number {tracking_id} still hasn't arrived.",),
        },
        lambda a, r: {"status": _pick(r, ("in transit", "out for delivery", "delivered"))},
        "Package {tracking_id} is {status}.",
        "track parcels",
        heldout=True,
    ),
    Function(
        "get_air_quality",
        "Get the air quality index of a city.",
        {"city": _s("City")},
        ("city",),
        lambda r: {"city": _pick(r, CITIES)},
        {
            "imperative": ("Get the air quality in {city}.",),
            "question": ("How clean is the air in {city} today?",),
            "polite": ("Please check the air quality index for {city}.",),
            "indirect": ("I have asthma and I'm going running in {city} this afternoon.",),
        },
        lambda a, r: {"aqi": r.randint(10, 180)},
        "The air quality index in {city} is {aqi}.",
        "report air quality",
        heldout=True,
    ),
    Function(
        "order_pizza",
        "Order a pizza for delivery.",
        {
            "size": _s("Pizza size", enum=["small", "medium", "large"]),
            "toppings": {"type": "array", "items": {"type": "string"}, "description": "Toppings"},
            "address": _s("Delivery address"),
        },
        ("size", "toppings", "address"),
        lambda r: {
            "size": _pick(r, ("small", "medium", "large")),
            "toppings": _pick(r, ("mushrooms", "olives", "peppers", "onions", "basil"), 2),
            "address": f"{r.randint(1, 99)} {_pick(r, ('Elm', 'Oak', 'Pine'))} Street",
        },
        {
            "imperative": ("Order a {size} pizza with {toppings} to {address}.",),
            "question": ("Can you get a {size} pizza with {toppings} delivered to {address}?",),
            "polite": ("Please order us a {size} pizza, {toppings}, to {address}.",),
            "indirect": ("We're starving at {address}; a {size} pizza with {toppings} would be perfect.",),
        },
        lambda a, r: {"eta_minutes": r.randint(20, 50)},
        "Your {size} pizza arrives in about {eta_minutes} minutes.",
        "order food",
        heldout=True,
    ),
    Function(
        "check_train_times",
        "List train departures between two stations.",
        {
            "from_station": _s("Departure station"),
            "to_station": _s("Arrival station"),
            "after": _s("Earliest departure time, HH:MM"),
        },
        ("from_station", "to_station"),
        lambda r: dict(
            zip(("from_station", "to_station"), _pick(r, CITIES, 2)), after=_pick(r, ("07:30", "12:00", "17:15"))
        ),
        {
            "imperative": ("List trains from {from_station} to {to_station} after {after}.",),
            "question": ("When are the trains from {from_station} to {to_station}?",),
            "polite": ("Could you look up trains from {from_station} to {to_station} leaving after {after}?",),
            "indirect": ("I need to be in {to_station} tonight and I'm in {from_station} until {after}.",),
        },
        lambda a, r: {"next": f"{r.randint(12, 22)}:{r.choice(('05', '20', '45'))}"},
        "The next train from {from_station} to {to_station} leaves at {next}.",
        "look up trains",
        heldout=True,
    ),
    Function(
        "define_word",
        "Look up the dictionary definition of a word.",
        {"word": _s("The word")},
        ("word",),
        lambda r: {"word": _pick(r, ("ephemeral", "laconic", "ubiquitous", "serendipity", "pragmatic"))},
        {
            "imperative": ("Define '{word}'.",),
            "question": ("What does '{word}' mean?",),
            "polite": ("Could you look up the meaning of '{word}'?",),
            "indirect": ("Someone called my plan '{word}' and I'm not sure that was a compliment.",),
        },
        lambda a, r: {"definition": "…"},
        "'{word}' means: {definition}",
        "look up words",
        heldout=True,
    ),
)

# (c) plain chat requests: the right action is text, whatever tools are offered
CHAT_TRAIN = (
    ("Hi! How are you today?", "I'm doing well, thanks for asking. How can I help you?"),
    ("Tell me a short joke.", "Why did the scarecrow win an award? Because he was outstanding in his field."),
    ("What does CPU stand for?", "CPU stands for central processing unit."),
    ("Write a one-line motivational quote.", "Small steps every day add up to big results."),
    ("Thanks, that's all I needed!", "You're welcome! Have a great day."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("Give me a synonym for 'happy'.", "A synonym for 'happy' is 'joyful'."),
    ("How many days are in a week?", "There are seven days in a week."),
    (
        "Summarize what a neural network is in one sentence.",
        "A neural network is a model made of layers of connected units that learns patterns from data.",
    ),
    ("Can you recommend a good habit for better sleep?", "Try going to bed at the same time every night."),
    ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("Say hello in a friendly way.", "Hello there! It's great to hear from you."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("Is a tomato a fruit?", "Yes, botanically a tomato is a fruit."),
    ("What's a good name for a goldfish?", "How about Bubbles?"),
    ("Explain what an API is in simple words.", "An API is a set of rules that lets programs talk to each other."),
)
CHAT_HELDOUT = (
    "Good evening! Anything fun planned?",
    "What is the opposite of 'ancient'?",
    "Tell me a fun fact about owls.",
    "How do I say thank you politely?",
    "Write a haiku about rain.",
    "What's the boiling point of water in Celsius?",
    "Which planet is known as the red planet?",
    "What does RAM stand for?",
    "Give me an antonym of 'generous'.",
    "Can you cheer me up a little?",
    "What is a prime number?",
    "Describe the ocean in three words.",
    "What do bees make?",
    "Name a famous painter.",
    "How are rainbows formed, briefly?",
    "What's the plural of 'mouse'?",
    "Suggest a title for a short story about a lighthouse.",
    "Why do leaves change colour in autumn?",
    "Who painted the Mona Lisa?",
    "Good morning!",
)


# --- (b) the project's own tools -----------------------------------------------------------------------
# Result-reader examples read only these deterministic Phase 8 metrics (formulas and shapes), none of which a
# research task asks about (a test checks): the training data cannot change when results are regenerated or
# research tasks are added.
READER_METRICS: tuple[tuple[str, str], ...] = (
    *(
        ("phase08.architecture", m)
        for m in (
            "gpt2_bf16_gb",
            "gpt2_non_embedding_params_m",
            "gpt2_position_table_params",
            "gpt2_total_params_m",
            "llama31_8b_bf16_bytes",
            "llama31_8b_bf16_gb",
            "llama31_8b_non_embedding_params",
            "llama31_8b_q_to_kv_ratio",
            "llama31_8b_rope_learned_params",
            "loaded_total_params",
            "loaded_vs_meta_shape_mismatches",
        )
    ),
    *(
        ("phase08.kv_cache", m)
        for m in (
            "kv_70b_gqa_128k_b10_gb",
            "kv_70b_gqa_128k_b50_gb",
            "kv_70b_gqa_32k_b10_gb",
            "kv_70b_gqa_32k_b1_gb",
            "kv_70b_gqa_32k_b50_gb",
            "kv_70b_gqa_8k_b10_gb",
            "kv_70b_gqa_8k_b1_gb",
            "kv_70b_gqa_8k_b50_gb",
            "kv_8b_gqa_128k_b10_gb",
            "kv_8b_gqa_128k_b50_gb",
            "kv_8b_gqa_32k_b10_gb",
            "kv_8b_gqa_32k_b1_gb",
            "kv_8b_gqa_32k_b50_gb",
            "kv_8b_gqa_8k_b10_gb",
            "kv_8b_gqa_8k_b1_gb",
            "kv_8b_gqa_8k_b50_gb",
            "kv_8b_mha_128k_b10_gb",
            "kv_8b_mha_128k_b50_gb",
            "kv_8b_mha_32k_b10_gb",
            "kv_8b_mha_32k_b1_gb",
            "kv_8b_mha_32k_b50_gb",
            "kv_8b_mha_8k_b10_gb",
            "kv_8b_mha_8k_b1_gb",
            "kv_8b_mha_8k_b50_gb",
            "kv_8b_mqa_128k_b10_gb",
            "kv_8b_mqa_128k_b1_gb",
            "kv_8b_mqa_128k_b50_gb",
            "kv_8b_mqa_32k_b10_gb",
            "kv_8b_mqa_32k_b1_gb",
            "kv_8b_mqa_32k_b50_gb",
            "kv_8b_mqa_8k_b10_gb",
            "kv_8b_mqa_8k_b1_gb",
            "kv_8b_mqa_8k_b50_gb",
            "measured_vs_formula_max_abs_diff_bytes",
        )
    ),
)
KV_MODELS = ("llama-3.1-8b", "llama-3.1-70b", "gpt2-124m", "mixtral-8x7b")
KV_CONTEXTS = (2048, 4096, 8192, 16384, 32768, 65536, 131072)

PROJECT_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    # family "train" wordings are trained on; "heldout" wordings only run in heldout_multistep
    "calculator": {
        "train": ("What is {expr}?", "Compute {expr}.", "Calculate {expr} for me."),
        "heldout": ("I need the value of {expr}, exactly.", "Work out {expr}, please."),
    },
    "kv_cache_gb": {
        "train": (
            "How many GB of KV cache does {model} need for {batch} sequences of {context} tokens?",
            "KV cache size in GB for {model} at {context} tokens context and batch {batch}?",
        ),
        "heldout": (
            "If I serve {model} to {batch} users at once, each with {context} tokens of context, how much "
            "KV cache memory (GB) is that?",
        ),
    },
    "read_result_metric": {
        "train": (
            "What value does {exercise} report for the metric {metric}?",
            "Read the metric {metric} from the committed result of {exercise}.",
        ),
        "heldout": ("According to this repo's {exercise} result, what is {metric}?",),
    },
    "kv_then_calculator": {
        "train": (
            "How many GB of KV cache do {n} copies of {model} at {context} tokens (batch 1 each) need in total?",
        ),
        "heldout": (
            "Each of my {n} agents runs {model} with {context} tokens of context; what is the total KV cache in GB?",
        ),
    },
    "metric_then_calculator": {
        "train": ("What is {metric} of {exercise} multiplied by {k}?",),
        "heldout": ("Take {exercise}'s {metric} and scale it by {k}: what do you get?",),
    },
    "search_notes": {  # the held-out tool
        "heldout": ("Search the notes for what this repo says about {topic}.", "Look up {topic} in the project notes."),
    },
}
SEARCH_TOPICS = (
    "the KV cache of Llama 3.1 8B",
    "QLoRA memory use",
    "DPO held-out accuracy",
    "HyDE retrieval",
    "judge calibration",
    "reward model accuracy",
    "pgvector storage",
    "mixture-of-experts routing",
    "rank sweep of LoRA",
    "the contamination check",
    "prompt injection defence",
    "agent tracing",
)


# --- examples ---------------------------------------------------------------------------------------
@dataclass
class Example:
    """One decision point: the conversation so far, the tools offered, and the gold next action.

    ``gold`` is ``{"call": {"name", "arguments"}}`` or ``{"text": "..."}`` (an answer or a decline);
    ``expect`` says how a reply is scored (``call``, ``no_call``, ``answer`` containing ``contains``).
    """

    id: str
    split: str
    kind: str  # call | irrelevant | chat | final | trajectory
    mode: str  # auto | agent
    system: str | None
    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    gold: dict[str, Any]
    family: str = ""
    function: str = ""
    contains: list[str] = field(default_factory=list)
    terminal: bool = True  # the last decision of its conversation (a training row ends here)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MultiStepTask:
    """A task run end to end by the Phase 13 loop with the real tools; solved when the answer states
    every string in ``contains`` (numbers as the tools print them)."""

    id: str
    split: str
    question: str
    tools: list[str]
    contains: list[str]
    template: str


def _format(template: str, args: dict[str, Any]) -> str:
    def text(value: Any) -> str:
        if isinstance(value, list):
            return " and ".join(map(str, value))
        if isinstance(value, dict):
            return ", ".join(f"{v} {k}" for k, v in value.items())
        return str(value)

    return template.format(**{k: text(v) for k, v in args.items()})


def _slots(template: str) -> set[str]:

    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _call_id(rng: random.Random) -> str:
    return f"call_{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"


def _agent_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return tools + [FINAL_ANSWER_TOOL]


def _final(mode: str, text: str) -> dict[str, Any]:
    """The gold action that ends a turn with ``text``: plain text under auto, final_answer for an agent."""
    return {"call": {"name": FINAL_ANSWER, "arguments": {"answer": text}}} if mode == "agent" else {"text": text}


def _system(mode: str, rng: random.Random) -> str | None:
    return NATIVE_SYSTEM if mode == "agent" else rng.choice(CHAT_SYSTEMS)


def _offer(fn: Function, pool: list[Function], rng: random.Random, include: bool) -> list[dict[str, Any]]:
    """The tools offered: the function itself (or not, for irrelevance) among 0-2 distractors, shuffled."""
    others = [f for f in pool if f.name != fn.name]
    chosen = rng.sample(others, rng.randint(0 if include else 1, 2)) + ([fn] if include else [])
    rng.shuffle(chosen)
    return [f.schema() for f in chosen]


def function_examples(
    split: str,
    functions: list[Function],
    families: tuple[str, ...],
    rng: random.Random,
    per_function: int,
    pool: list[Function],
    modes: tuple[str, ...] = MODES,
) -> list[Example]:
    """Call, irrelevance and final-turn examples for synthetic functions (sources a, c, d)."""
    out: list[Example] = []
    for fn in functions:
        templates = [(fam, t) for fam in families for t in fn.templates.get(fam, ())]
        for i in range(per_function):
            family, template = rng.choice(templates)
            full = fn.sample(rng)
            args = {k: v for k, v in full.items() if k in _slots(template)}
            request = _format(template, args)
            mode = modes[i % len(modes)]
            base = f"{split}-{fn.name}-{i}"
            tools = _offer(fn, pool, rng, include=True)
            offered = _agent_tools(tools) if mode == "agent" else tools
            user = [{"role": "user", "content": request}]
            out.append(
                Example(
                    f"{base}-call",
                    split,
                    "call",
                    mode,
                    _system(mode, rng),
                    offered,
                    user,
                    {"call": {"name": fn.name, "arguments": args}},
                    family,
                    fn.name,
                    terminal=False,
                )
            )
            # the final turn: the call ran and returned; the answer states what it returned
            result = fn.result(args, rng)
            call = ToolCall(_call_id(rng), fn.name, args)
            history = user + [
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call.id, "name": fn.name, "content": json.dumps(result)},
            ]
            answer = _format(fn.answer, {**full, **args, **result})
            out.append(
                Example(
                    f"{base}-final",
                    split,
                    "final",
                    mode,
                    _system(mode, rng),
                    offered,
                    history,
                    _final(mode, answer),
                    family,
                    fn.name,
                    contains=[str(v) for v in result.values() if str(v) != "…"][:2],
                )
            )
            # irrelevance: the same kind of request with its tool withheld
            if i % 2 == 0:
                tools = _offer(fn, pool, rng, include=False)
                offered = _agent_tools(tools) if mode == "agent" else tools
                decline = f"I can't {fn.purpose} with the tools I have here."
                out.append(
                    Example(
                        f"{base}-irrelevant",
                        split,
                        "irrelevant",
                        mode,
                        _system(mode, rng),
                        offered,
                        user,
                        _final(mode, decline),
                        family,
                        fn.name,
                    )
                )
    return out


def chat_examples(
    split: str,
    chats: list[tuple[str, str | None]],
    rng: random.Random,
    pool: list[Function],
    modes: tuple[str, ...] = MODES,
) -> list[Example]:
    """Plain chat requests offered unrelated tools (source c): the answer is text."""
    out = []
    for i, (request, reply) in enumerate(chats):
        mode = modes[i % len(modes)]
        tools = [f.schema() for f in rng.sample(pool, rng.randint(1, 3))]
        offered = _agent_tools(tools) if mode == "agent" else tools
        out.append(
            Example(
                f"{split}-chat-{i}",
                split,
                "chat",
                mode,
                _system(mode, rng),
                offered,
                [{"role": "user", "content": request}],
                _final(mode, reply or ""),
                "chat",
            )
        )
    return out


# --- (b) trajectories over the real tools ----------------------------------------------------------
def research_task_metrics() -> set[tuple[str, str]]:
    """(exercise, metric) pairs the shipped research tasks ask about: never in the training data."""

    pairs = set()
    for task in load_tasks():
        derivation = task.derivation or {}
        if "metric" in derivation:
            pairs.add(tuple(derivation["metric"]))
        for ref in __import__("re").findall(r"\{([\w.]+):(\w+)\}", derivation.get("expression", "")):
            pairs.add(ref)
    return pairs


def _plan(
    kind: str, rng: random.Random, metrics: list[tuple[str, str]]
) -> tuple[dict[str, Any], list[tuple[str, dict]]]:
    """(template slots, the tool calls that solve it) for one project-tool task of ``kind``."""
    if kind == "calculator":
        a, b = rng.randint(12, 999), rng.randint(3, 99)
        op = rng.choice(("*", "+", "-", "/"))
        expr = f"{a} {op} {b}"
        return {"expr": expr}, [("calculator", {"expression": expr})]
    if kind == "kv_cache_gb":
        args = {
            "context": rng.choice(KV_CONTEXTS),
            "batch": rng.choice((1, 2, 4, 8, 16)),
            "model": rng.choice(KV_MODELS),
        }
        return dict(args), [("kv_cache_gb", args)]
    if kind == "read_result_metric":
        exercise, metric = rng.choice(metrics)
        return {"exercise": exercise, "metric": metric}, [
            ("read_result_metric", {"exercise": exercise, "metric": metric})
        ]
    if kind == "kv_then_calculator":
        args = {"context": rng.choice(KV_CONTEXTS), "batch": 1, "model": rng.choice(KV_MODELS)}
        n = rng.choice((2, 3, 4, 6, 10))
        return {**args, "n": n}, [("kv_cache_gb", args), ("calculator", {"expression": f"{{0}} * {n}"})]
    if kind == "metric_then_calculator":
        exercise, metric = rng.choice(metrics)
        k = rng.choice((2, 3, 4, 10, 0.5))
        return (
            {"exercise": exercise, "metric": metric, "k": k},
            [
                ("read_result_metric", {"exercise": exercise, "metric": metric}),
                ("calculator", {"expression": f"{{0}} * {k}"}),
            ],
        )
    if kind == "search_notes":
        return {"topic": rng.choice(SEARCH_TOPICS)}, [("search_notes", {"query": None})]
    raise ValueError(f"unknown project task kind {kind!r}")


def _observe(tools: dict[str, Any], name: str, arguments: dict[str, Any]) -> tuple[str, Any]:
    """Run the real tool: (observation text, raw value)."""

    obs = Toolbox([tools[name]], retries=0).execute(ToolCall("x", name, arguments))
    if obs.outcome != "ok":
        raise RuntimeError(f"tool {name}({arguments}) failed while generating data: {obs.content}")
    return obs.content, obs.value


def _value_text(value: Any) -> str:
    """How an answer states a tool's value (the reader returns a record; numbers as the tool printed them)."""
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 4) if isinstance(value, float) else value)


def project_trajectory(
    split: str, kind: str, template: str, index: int, rng: random.Random, metrics: list[tuple[str, str]], mode: str
) -> tuple[list[Example], MultiStepTask]:
    """A task over the real tools: one example per decision (each call, then the answer)."""

    tools = {t.name: t for t in RESEARCH_TOOLS}
    slots, plan = _plan(kind, rng, metrics)
    question = _format(template, slots)
    names = sorted({name for name, _ in plan} | ({"calculator"} if kind != "calculator" else set()))
    offered_names = names + [n for n in ("kv_cache_gb", "read_result_metric") if n not in names and rng.random() < 0.5]
    schemas = [tools[n].schema() for n in offered_names]
    offered = _agent_tools(schemas) if mode == "agent" else schemas
    system = _system(mode, rng)
    history: list[dict[str, Any]] = [{"role": "user", "content": question}]
    examples, previous, last_value = [], None, None
    for step, (name, arguments) in enumerate(plan):
        if name == "calculator" and previous is not None:
            arguments = {"expression": arguments["expression"].format(_value_text(previous))}
        if name == "search_notes":
            arguments = {"query": slots["topic"]}
        examples.append(
            Example(
                f"{split}-{kind}-{index}-s{step}",
                split,
                "trajectory",
                mode,
                system,
                offered,
                list(history),
                {"call": {"name": name, "arguments": arguments}},
                kind,
                name,
                terminal=False,
            )
        )
        content, value = _observe(tools, name, arguments)
        call = ToolCall(_call_id(rng), name, arguments)
        history += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call.id, "name": name, "content": content},
        ]
        previous = last_value = value
    if kind == "search_notes":
        top = last_value[0] if last_value else {}
        answer = f"The notes cover it in {top.get('chunk_id', 'the top result')}."
        contains = [str(top.get("chunk_id", ""))]
    else:
        stated = _value_text(last_value)
        answer = f"The answer is {stated}."
        contains = [stated]
    examples.append(
        Example(
            f"{split}-{kind}-{index}-answer",
            split,
            "trajectory",
            mode,
            system,
            offered,
            list(history),
            _final(mode, answer),
            kind,
            "answer",
            contains=contains,
        )
    )
    task = MultiStepTask(f"{split}-{kind}-{index}", split, question, offered_names, contains, template)
    return examples, task


# --- the whole set ------------------------------------------------------------------------------------
@dataclass
class ToolUseData:
    train: list[Example]
    heldout: dict[str, list[Example]]
    multistep: list[MultiStepTask]

    def sha256(self) -> str:
        blob = json.dumps([e.to_dict() for e in self.train], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def counts(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            **{k: len(v) for k, v in self.heldout.items()},
            "heldout_multistep": len(self.multistep),
        }


@functools.lru_cache(maxsize=4)
def generate(
    seed: int = 0,
    per_function: int = 8,
    per_project_kind: int = 10,
    heldout_per_function: int = 4,
    multistep_per_kind: int = 8,
) -> ToolUseData:
    """The training set and the held-out splits, deterministically from ``seed``. Made once per process and
    arguments (it runs the real tools; the recipe check and the evaluation both ask for it): treat it as
    read-only."""
    rng = random.Random(seed)
    seen = [f for f in FUNCTIONS if not f.heldout]
    unseen = [f for f in FUNCTIONS if f.heldout]
    metrics = sorted(READER_METRICS)
    train = function_examples("train", seen, TRAIN_FAMILIES, rng, per_function, seen)
    train += chat_examples("train", list(CHAT_TRAIN), rng, seen)
    project_kinds = [k for k in PROJECT_TEMPLATES if "train" in PROJECT_TEMPLATES[k]]
    for kind in project_kinds:
        for i in range(per_project_kind):
            template = rng.choice(PROJECT_TEMPLATES[kind]["train"])
            examples, _ = project_trajectory("train", kind, template, i, rng, metrics, MODES[i % 2])
            train += examples
    rng.shuffle(train)

    # held-out decisions are asked as a chat client asks them: tool_choice="auto"
    held = random.Random(seed + 1)
    heldout = {
        "heldout_template": [
            e
            for e in function_examples(
                "heldout_template", seen, ("indirect",), held, heldout_per_function, seen, ("auto",)
            )
            if e.kind != "final"
        ],
        "heldout_function": [
            e
            for e in function_examples(
                "heldout_function", unseen, TRAIN_FAMILIES, held, 2 * heldout_per_function, seen + unseen, ("auto",)
            )
            if e.kind != "final"
        ],
        "heldout_chat": chat_examples("heldout_chat", [(c, "") for c in CHAT_HELDOUT], held, seen + unseen, ("auto",)),
    }
    multistep: list[MultiStepTask] = []
    tool_examples: list[Example] = []
    for kind, templates in PROJECT_TEMPLATES.items():
        for i in range(multistep_per_kind):
            examples, task = project_trajectory(
                "heldout_multistep" if kind != "search_notes" else "heldout_tool",
                kind,
                held.choice(templates["heldout"]),
                i,
                held,
                metrics,
                "agent",
            )
            if kind == "search_notes":
                tool_examples.append(examples[0])
            else:
                multistep.append(task)
    heldout["heldout_tool"] = tool_examples
    return ToolUseData(train, heldout, multistep)


def training_rows(examples: list[Example]) -> list[dict[str, Any]]:
    """Whole conversations for ``train_sft(loss_on="assistant")``: the exact turns ``lab.llm.local`` builds,
    ending with the gold action (a ``<tool_call>`` block, or text). One row per conversation, taken at its
    terminal decision: every earlier assistant turn in it is a gold call too, so each row teaches all of
    its decisions while its prompt is computed once."""

    rows = []
    for e in (e for e in examples if e.terminal):
        turns = chat_turns(e.messages, e.system, [tools_prompt(e.tools)] if e.tools else [])
        gold = e.gold
        if "call" in gold:
            target = render_tool_call(ToolCall("gold", gold["call"]["name"], gold["call"]["arguments"]))
        else:
            target = gold["text"]
        rows.append({"messages": turns + [{"role": "assistant", "content": target}]})
    return rows
