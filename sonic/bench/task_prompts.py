"""Prompts of `sonic bench --tasks`, by category, written for the default model (SmolLM2-135M-Instruct):
short, direct instructions a small chat model follows. Speculation pays where the answer repeats its
input (code edits, extraction, grounded answers) and least on open-ended text (creative writing).
"""

INVENTORY_PY = '''import json
from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    quantity: int


def load_items(path):
    with open(path) as f:
        data = json.load(f)
    items = []
    for row in data:
        items.append(Item(row["name"], row["price"], row["quantity"]))
    return items


def total_value(items):
    total = 0.0
    for item in items:
        total += item.price * item.quantity
    return total


def low_stock(items, limit=5):
    return [item for item in items if item.quantity < limit]


def restock(items, name, amount):
    for item in items:
        if item.name == name:
            item.quantity += amount
            return item
    raise KeyError(name)


if __name__ == "__main__":
    items = load_items("stock.json")
    print("Total value:", total_value(items))
    for item in low_stock(items):
        print("Low stock:", item.name)
'''

SERVER_PY = '''import socket
import threading

HOST = "127.0.0.1"
PORT = 8080
BUFFER_SIZE = 1024


def handle_client(conn, addr):
    print("Connected by", addr)
    with conn:
        while True:
            data = conn.recv(BUFFER_SIZE)
            if not data:
                break
            conn.sendall(data.upper())
    print("Closed", addr)


def serve():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, PORT))
        server.listen()
        print("Listening on", HOST, PORT)
        while True:
            conn, addr = server.accept()
            thread = threading.Thread(target=handle_client, args=(conn, addr))
            thread.start()


if __name__ == "__main__":
    serve()
'''

STATS_PY = '''def mean(values):
    return sum(values) / len(values)


def variance(values):
    m = mean(values)
    return sum((x - m) ** 2 for x in values) / len(values)


def median(values):
    ordered = sorted(values)
    n = len(ordered)
    middle = n // 2
    if n % 2 == 1:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def summarize(values):
    print("count:", len(values))
    print("mean:", mean(values))
    print("median:", median(values))
    print("variance:", variance(values))


if __name__ == "__main__":
    summarize([3, 1, 4, 1, 5, 9, 2, 6])
'''

LIBRARY_DOC = ("The Millbrook Public Library opened in 1921 in a former bank building on Main Street. In 1968 it "
               "moved to a larger building by the river, paid for by a town vote and a gift from the Harlan family. "
               "Today the library holds about 85,000 books and lends laptops, telescopes and sewing machines. It is "
               "open from 9 am to 8 pm on weekdays and from 10 am to 4 pm on Saturdays, and closed on Sundays. A "
               "library card is free for anyone who lives or works in Millbrook. The children's room runs a story "
               "hour every Wednesday at 10 am, and volunteers teach computer skills to adults on Thursday evenings.")

SOLAR_DOC = ("Solar panels turn sunlight into electricity using cells made of silicon. When light hits a cell, it "
             "frees electrons, and the flow of these electrons is an electric current. A typical home panel "
             "produces between 250 and 400 watts in full sun. Panels work best when they face the sun directly, "
             "so in the northern hemisphere they are usually mounted facing south. Their output drops on cloudy "
             "days and stops at night, which is why many homes pair panels with batteries. Most panels keep about "
             "80 percent of their original output after 25 years.")

BEES_DOC = ("Honey bees live in colonies of up to 60,000 insects. Each colony has one queen, who lays up to 2,000 "
            "eggs a day. Worker bees are female; they clean the hive, feed the young, build wax comb and gather "
            "nectar and pollen. Male bees, called drones, exist to mate with a queen. A worker bee lives about six "
            "weeks in summer but can survive several months in winter. Bees tell each other where to find flowers "
            "with a waggle dance: the angle of the dance shows the direction and its length shows the distance.")

# A system message per category where the model needs one to answer in the expected form.
SYSTEM: dict[str, str] = {
    "code-editing": "You are a code editor. Reply with the complete edited file in one code block and nothing else.",
}

TASKS: dict[str, list[str]] = {
    "code-editing": [
        f"```python\n{INVENTORY_PY}```\n\nRename the variable `items` to `products` everywhere.",
        f"```python\n{SERVER_PY}```\n\nChange the port from 8080 to 9000.",
        f"```python\n{STATS_PY}```\n\nAdd a function `std_dev(values)` that returns the square root of the "
        "variance.",
    ],
    "code-generation": [
        "Write a Python function that checks whether a string is a palindrome, ignoring spaces and case.",
        "Write a Python class `Stack` with methods push, pop, peek and is_empty.",
        "Write a Python function that reads a CSV file and returns the average of one numeric column.",
    ],
    "extraction": [
        "Extract the name, age, city and job of the person as JSON with the keys name, age, city and job.\n\n"
        "Text: Maria Lopez is a 34-year-old nurse who lives in Denver. She moved there from Austin in 2015.",
        "Extract every product from this order as a JSON list of objects with the keys product, quantity and "
        "price.\n\nOrder: 2 notebooks at $3.50 each, 1 blue pen at $1.20, and 3 packs of sticky notes at $2.00 "
        "each.",
        "Extract the event as JSON with the keys title, date, time, place and speaker.\n\nText: The talk "
        "\"Living with Bees\" will be given by Dr. Sam Patel on May 14 at 6:30 pm in the Millbrook Library "
        "hall.",
    ],
    "grounded": [
        f"Read the document and answer the question.\n\nDocument: {LIBRARY_DOC}\n\nQuestion: When is the "
        "library open, and who can get a free library card?",
        f"Summarise this document in three sentences.\n\nDocument: {SOLAR_DOC}",
        f"Read the document and answer the question.\n\nDocument: {BEES_DOC}\n\nQuestion: What do worker bees "
        "do, and how long do they live?",
    ],
    "creative": [
        "Write a short story about a robot who learns to paint.",
        "Write a poem about the ocean at night.",
        "Describe a city built on clouds, as if you were a traveller seeing it for the first time.",
    ],
}
