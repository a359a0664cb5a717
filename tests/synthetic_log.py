"""A synthetic question log for the clustering test: 200 questions drawn from 5 known topics a
Scrum course might not cover, phrased many ways, plus unrelated noise. Seeded: the same list
every run."""

from __future__ import annotations

import random

TOPICS = {
    "exam fees": [
        "how much the CSM exam costs", "what the certification fee is", "whether the exam price includes the course",
        "how much I pay to retake the certification exam", "if there is a discount on the exam fee",
        "what the CSPO certificate costs in euros", "who pays the certification fee", "the price of the exam voucher",
        "whether the renewal fee is yearly", "how expensive the Scrum certification is",
        "if the exam fee is refundable", "what a second exam attempt costs",
    ],
    "remote teams": [
        "how to run the daily scrum with a remote team", "which video tool distributed teams use for standups",
        "how to hold a retrospective online", "how a team across time zones meets every day",
        "what works for sprint planning over Zoom", "how remote developers share a task board",
        "how to keep a distributed team engaged in meetings", "whether the team must sit in one office",
        "how to do a sprint review with people working from home", "how to facilitate a virtual retrospective",
        "what online whiteboard to use for a remote scrum team", "how to handle a team spread over three countries",
    ],
    "story points": [
        "how to estimate user stories in story points", "what planning poker is", "how to calculate team velocity",
        "why story points use the Fibonacci sequence", "how to convert story points into hours",
        "what a good velocity is for a new team", "how to estimate a story nobody understands",
        "whether to re-estimate unfinished stories", "how t-shirt sizing compares with story points",
        "how to use velocity to forecast a release date", "who estimates the story points",
        "what to do when estimates are always wrong",
    ],
    "scaling": [
        "how SAFe compares with LeSS", "how to scale Scrum to ten teams", "what a Scrum of Scrums is",
        "what the Nexus framework is", "how several teams share one product backlog",
        "what a release train is in SAFe", "how large organisations coordinate many scrum teams",
        "whether LeSS needs one product owner for all teams", "how to synchronise sprints across many teams",
        "what a chief product owner does at scale", "how to handle dependencies between scrum teams",
        "which scaling framework suits a bank with 300 developers",
    ],
    "kanban": [
        "how Kanban differs from Scrum", "what a WIP limit is", "when to use Kanban instead of sprints",
        "what Scrumban is", "how to measure cycle time on a Kanban board", "whether Kanban has a product owner",
        "how to set work in progress limits", "what a cumulative flow diagram shows",
        "if a support team should use Kanban", "how to move a team from Scrum to Kanban",
        "what lead time means in Kanban", "how a Kanban board columns should look",
    ],
}
FRAMES = ["Can you tell me {}?", "I want to know {}.", "Does the course explain {}?"]
NOISE = [
    "What is the weather like in Lisbon tomorrow?", "How do I bake sourdough bread?",
    "Who won the football world cup in 2014?", "What is the capital of Australia?",
    "How many calories are in an avocado?", "Recommend a good science fiction novel.",
    "How do I change a flat bicycle tyre?", "What time does the museum open on Sunday?",
    "How tall is Mount Kilimanjaro?", "Translate 'good morning' into Japanese.",
    "What is the best way to learn the guitar?", "How long should I boil an egg?",
    "Which planet has the most moons?", "How do I get a stain out of a carpet?",
    "What is the population of Canada?", "Can dogs eat grapes?",
    "How do I fix a dripping tap?", "Who painted the Mona Lisa?",
    "What is the speed of sound?", "Where can I park near the train station?",
]


def synthetic_questions(seed: int = 15) -> list[tuple[str, str | None]]:
    """200 (question, topic) pairs, shuffled: 36 per topic, 20 noise (topic None)."""
    items = [(frame.format(phrase), topic) for topic, phrases in TOPICS.items()
             for phrase in phrases for frame in FRAMES]
    items += [(q, None) for q in NOISE]
    random.Random(seed).shuffle(items)
    return items
