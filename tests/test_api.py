"""The API: Assistant.answer/stream over the real prompt, chain and Chroma, with the fake
embedder and the echo chat model (which answers with the first passage's first sentence)."""

from __future__ import annotations

import re
import unicodedata

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from conftest import CORPUS, EchoChatModel, FakeEmbeddings
from scrumbot import Answer, Assistant, Settings, Source
from scrumbot.chain import NOT_COVERED
from scrumbot.errors import BadQuestionError, IndexMissingError

IN_SCOPE = "Which certification is sought by business analysts?"
# its best passage opens with a sentence, so the echo model gives a real multi-word answer
ECHOED = "Who is Braintrust Group?"
OUT_OF_SCOPE = "Which volcano erupted near Reykjavik yesterday?"


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def squash(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def bot(fake_assistant):
    fake_assistant.index()
    return fake_assistant


def test_answer_has_text_and_scored_sources(bot):
    a = bot.answer(ECHOED)

    assert isinstance(a, Answer) and a.done and not a.refused
    assert a.sources and all(isinstance(s, Source) for s in a.sources)
    corpus_text = squash((CORPUS / "product-owner-101.txt").read_text())
    for s in a.sources:
        assert s.source == "product-owner-101.txt"
        assert s.text and squash(s.text) in corpus_text
        assert bot.settings.min_score <= s.score <= 1.0
    assert [s.score for s in a.sources] == sorted((s.score for s in a.sources), reverse=True)
    # the echo model repeats the first sentence of passage [1]: the passages reached the model
    assert "Braintrust Group is a worldwide leader in Agile transformations." in a.text
    assert a.text in a.sources[0].text
    assert "business analysts" in " ".join(s.text for s in bot.answer(IN_SCOPE).sources)
    d = a.as_dict()
    assert d["answer"] == a.text and d["refused"] is False
    assert {"source", "text", "score"} <= set(d["sources"][0])


def test_out_of_scope_is_refused_before_the_model_runs(bot):
    assert not words(OUT_OF_SCOPE) & words((CORPUS / "product-owner-101.txt").read_text())
    llm: EchoChatModel = bot.llm

    a = bot.answer(OUT_OF_SCOPE)

    assert a.refused is True and a.text == NOT_COVERED and a.sources == []
    assert llm.calls == [], "the gate must decide before generation"
    bot.answer(IN_SCOPE)
    assert len(llm.calls) == 1  # ...while an answerable question does reach the model


class RefusingChatModel(EchoChatModel):
    def _reply(self, messages):
        self.calls.append(messages)
        return "The passages do not mention that."


def test_a_model_refusal_becomes_a_refused_answer_without_sources(settings, corpus):
    bot = Assistant(settings.replace(min_score=0.2), embeddings=FakeEmbeddings(),
                    embedder_name="fake", llm=RefusingChatModel())
    bot.index()
    a = bot.answer(IN_SCOPE)
    assert len(bot.llm.calls) == 1
    assert a.refused and a.text == NOT_COVERED and a.sources == []


def test_stream_yields_growing_snapshots_then_done(bot):
    snaps = list(bot.stream(ECHOED))

    assert snaps[-1].done and all(not s.done for s in snaps[:-1])
    partial = [s.text for s in snaps[:-1]]
    assert len({t for t in partial if t}) >= 3, "the echo model streams word by word"
    for before, after in zip(partial, partial[1:]):
        assert after.startswith(before) and len(after) >= len(before)
    assert snaps[-1].text == partial[-1].strip() == bot.answer(ECHOED).text
    # the passages found are known before the first token; which of them the answer quotes, at the end
    assert snaps[-1].retrieved == snaps[0].retrieved and snaps[0].sources == []
    assert snaps[-1].sources and set(snaps[-1].sources) <= set(snaps[0].retrieved)


def human_ai_turns(messages) -> list[tuple[str, str]]:
    """The history the prompt carried: (human, ai) pairs between the system message and the
    final human message holding the passages."""
    assert isinstance(messages[0], SystemMessage) and isinstance(messages[-1], HumanMessage)
    middle = messages[1:-1]
    assert all(isinstance(m, HumanMessage if i % 2 == 0 else AIMessage) for i, m in enumerate(middle))
    return [(middle[i].content, middle[i + 1].content) for i in range(0, len(middle), 2)]


def test_history_reaches_the_prompt_capped_to_max_turns_only_while_a_question_leans_on_it(bot):
    history = [(f"Question number {i} about CSM?", f"Answer number {i}.") for i in range(1, 6)]

    # the echo model cannot rewrite "it": the question is searched with the previous one and
    # asked with the history
    assert not bot.answer("What does that certification focus on?", history).refused

    assert bot.settings.max_history_turns == 3
    assert human_ai_turns(bot.llm.calls[-1]) == history[-3:]
    assert "What does that certification focus on?" in bot.llm.calls[-1][-1].content

    one = Assistant(bot.settings.replace(max_history_turns=1), embeddings=bot.embeddings,
                    embedder_name=bot.embedder_name, llm=EchoChatModel())
    one.answer("What does that certification focus on?", history)
    assert human_ai_turns(one.llm.calls[-1]) == history[-1:]
    # a question that stands alone is read without it: every turn of history is prefill
    bot.answer("What does the CSPO certification focus on?", history)
    assert human_ai_turns(bot.llm.calls[-1]) == []


def test_follow_up_question_searches_with_the_previous_question(bot, monkeypatch):
    queries: list[str] = []
    real = bot.embeddings.embed_query
    monkeypatch.setattr(bot.embeddings, "embed_query", lambda text: queries.append(text) or real(text))
    history = [("How do I get the CSPO certification?",
                "Attend a two-day Certified Scrum Product Owner course and pass an online exam.")]

    a = bot.answer("Who is it for?", history)

    assert queries[0] == "How do I get the CSPO certification? Who is it for?"
    assert not a.refused and any("CSPO" in s.text for s in a.sources)
    queries.clear()
    bot.answer("Who is it for?")  # no history: nothing to borrow
    assert queries[0] == "Who is it for?"
    queries.clear()
    bot.answer("What certification suits business analysts?", history)  # stands on its own
    assert queries[0] == "What certification suits business analysts?"


@pytest.mark.parametrize("question, message", [
    ("", "The question is empty."),
    ("   \n\t  ", "The question is empty."),
    ("\x00\x07\u200b", "The question is empty."),
    ("a" * 100_000, "The question is 100,000 characters long; the limit is 2,000."),
    (None, "The question must be text."),
])
def test_bad_questions_get_a_clear_message(fake_assistant, question, message):
    # no index on purpose: the question is checked before anything else happens
    with pytest.raises(BadQuestionError) as err:
        fake_assistant.answer(question)
    assert err.value.message == message
    if "empty" in message or "limit" in message:
        assert err.value.hint  # says what to do instead


def test_control_characters_and_broken_surrogates_are_cleaned(bot):
    a = bot.answer("Which\x00 certification\x07 is sought\u200b by business\r\nanalysts?\ud800")

    assert not a.refused
    assert "Which certification is sought by business analysts?" in a.question
    a.question.encode("utf-8")  # no lone surrogates left
    assert not [c for c in a.question if unicodedata.category(c)[0] == "C"]
    assert "business analysts?" in bot.llm.calls[-1][-1].content


def test_missing_index_says_what_to_run(fake_assistant):
    with pytest.raises(IndexMissingError, match="scrumbot index"):
        fake_assistant.answer(IN_SCOPE)


def test_extractive_mode_answers_from_passages_without_an_llm(settings, corpus, monkeypatch):
    import scrumbot.llm

    def no_llm(_settings):
        raise AssertionError("extractive mode must not build a chat model")

    monkeypatch.setattr(scrumbot.llm, "chat_model", no_llm)
    bot = Assistant(settings.replace(llm="extractive", min_score=0.2), embeddings=FakeEmbeddings(),
                    embedder_name="fake")
    bot.index()

    a = bot.answer(IN_SCOPE)

    assert bot.llm is None
    assert not a.refused and a.sources
    passages = " ".join(squash(s.text) for s in a.sources)
    pieces = [p for p in re.split(r"(?<=[.!?])\s+", a.text) if p]
    assert pieces and all(p in passages for p in pieces), a.text
    assert "business analysts" in a.text  # the sentence that answers, not just any sentence
    assert bot.answer(OUT_OF_SCOPE).refused


def test_status_and_a_missing_index_do_not_load_the_embedder(settings, monkeypatch):
    """Loading torch and MiniLM takes seconds; `scrumbot status` and the 'run scrumbot index'
    error must not wait for it."""
    import scrumbot.api

    def no_model():
        raise AssertionError("the embedding model was loaded")

    monkeypatch.setattr(scrumbot.api, "_huggingface_embeddings", no_model)
    bot = Assistant(settings)  # the real configuration: no fakes given

    assert bot.status()["index"]["exists"] is False
    with pytest.raises(IndexMissingError, match="scrumbot index"):
        bot.answer(IN_SCOPE)


class RewritingChatModel(EchoChatModel):
    """Echoes like EchoChatModel, but answers a rewrite request with a standalone question."""

    def _reply(self, messages):
        from scrumbot.chain import REWRITE

        if messages[-1].content.startswith(REWRITE):
            self.calls.append(messages)
            assert "User: How do I get the CSPO certification?" in messages[-1].content
            return "Rewritten: Who is the CSPO certification for?"
        return super()._reply(messages)


def test_a_follow_up_is_rewritten_by_the_model_and_only_a_follow_up(settings, corpus, monkeypatch):
    from scrumbot.chain import REWRITE, SYSTEM

    bot = Assistant(settings, embeddings=FakeEmbeddings(), embedder_name="fake", llm=RewritingChatModel())
    bot.index()
    queries: list[str] = []
    real = bot.embeddings.embed_query
    monkeypatch.setattr(bot.embeddings, "embed_query", lambda text: queries.append(text) or real(text))
    history = [("How do I get the CSPO certification?", "Attend a two-day course and pass an exam.")]
    rewrites = lambda: [c for c in bot.llm.calls if c[-1].content.startswith(REWRITE)]  # noqa: E731

    a = bot.answer("Who is it for?", history)

    assert queries[0] == "Who is the CSPO certification for?"  # the rewrite, label stripped
    assert len(rewrites()) == 1 and not a.refused
    assert "Question: Who is the CSPO certification for?" in bot.llm.calls[-1][-1].content
    assert human_ai_turns(bot.llm.calls[-1]) == []  # rewritten to stand alone: no history needed
    # the rewrite and the answer open with the same system prompt: llama.cpp reuses that prefix
    assert rewrites()[0][0].content == bot.llm.calls[-1][0].content == SYSTEM
    bot.answer("What certification suits business analysts?", history)  # stands on its own
    bot.answer("Who is it for?")  # nothing to lean on
    assert len(rewrites()) == 1, "no extra model call for a question that stands alone"


class HandsBackChatModel(RewritingChatModel):
    """Asked to rewrite, hands back something else than a rewrite, as the 1.5B model does."""

    reply: str = ""

    def _reply(self, messages):
        from scrumbot.chain import REWRITE

        if messages[-1].content.startswith(REWRITE):
            self.calls.append(messages)
            return self.reply
        return EchoChatModel._reply(self, messages)


@pytest.mark.parametrize("reply", [
    "How do I get the CSPO certification?",  # the earlier question handed back
    "Rewritten: how do I get the CSPO certification",
    "How do I get the CSPO certification? Who is it for?",  # the two joined: answered as the first
    "What is the CSPO? Who is the CSPO for?",
])
def test_a_rewrite_that_is_not_the_new_question_is_not_used(settings, corpus, reply):
    """Without a usable rewrite, the model reads the follow-up as it was asked, with the
    conversation before it (the search still borrows the earlier question)."""
    bot = Assistant(settings, embeddings=FakeEmbeddings(), embedder_name="fake", llm=HandsBackChatModel())
    bot.llm.reply = reply
    bot.index()
    history = [("How do I get the CSPO certification?", "Attend a two-day course and pass an exam.")]

    bot.answer("Who is it for?", history)

    answer_prompt = bot.llm.calls[-1]
    assert answer_prompt[-1].content.endswith("Question: Who is it for?")
    assert human_ai_turns(answer_prompt) == history


@pytest.mark.parametrize("reply, usable", [
    ("Which certification is meant for the Product Owner?", True),
    ("Rewritten: Which certification is meant for a Product Owner?", True),
    ("Who does the Product Owner do?", False),  # a question of its own: the new one's words are gone
    ("What does the Product Owner do?", False),  # the earlier question handed back
    ("What does the Product Owner do? Which certification is meant for that role?", False),
])
def test_only_a_rewrite_of_the_new_question_is_used(reply, usable):
    from scrumbot.chain import standalone_question

    model = HandsBackChatModel()
    model.reply = reply
    history = [("What does the Product Owner do?", "The Product Owner orders the backlog.")]
    got = standalone_question(model, "Which certification is meant for that role?", history)
    assert (got is not None) == usable, got


def test_the_model_reads_the_best_sentences_of_long_passages_and_their_numbers(bot):
    from scrumbot.chain import chain_inputs
    from scrumbot.retrieve import focus

    long = [Source("a.txt", "Kanban limits work in progress. Teams pull work when they have capacity. "
                   "Boards show the flow of work.", 0.6),
            Source("b.txt", "The Product Owner orders the backlog. Business analysts often take the "
                   "CSPO course to learn backlog work. Stakeholders attend the review.", 0.5)]
    q = "Which course suits business analysts?"
    focused = focus(q, bot.embeddings.embed_query(q), long, bot.embeddings, budget=120)

    assert [p.source for p in focused] == ["a.txt", "b.txt"]  # numbers kept for the citations
    assert sum(len(p.text) for p in focused) <= 120
    assert "Business analysts often take the CSPO course to learn backlog work." in focused[1].text
    context = chain_inputs(q, focused, [], 600)["context"]
    assert "[2] " in context and ("[1] " in context) == bool(focused[0].text)
    assert focus(q, [1.0], long[:1], bot.embeddings, budget=1000) == long[:1]  # fits: untouched


def test_a_short_list_is_read_whole_with_its_intro_and_headings_are_not_sentences():
    from scrumbot.retrieve import units

    text = ("## INVEST\n\nBill Wake's INVEST acronym lists the qualities of a good story. A story should be:\n\n"
            "- Independent: it can be developed in any order.\n- Small: it fits within one sprint.\n\n"
            "## Who runs it\n\nThe retrospective is the last event. Its purpose is to improve the team.\n\n"
            "Formats include:\n\n- Start, Stop, Continue: " + "what the team should start, stop and keep doing, " * 2
            + "\n- Mad, Sad, Glad: the feelings the sprint left behind.")
    found = units(text)
    texts = [t for t, _ in found]
    assert "Bill Wake's INVEST acronym lists the qualities of a good story." in texts
    # one candidate, scored and chosen with the sentence before it: no item alone answers
    assert ("A story should be:\n- Independent: it can be developed in any order.\n"
            "- Small: it fits within one sprint.",
            "Bill Wake's INVEST acronym lists the qualities of a good story.") in found
    assert not any(t.startswith("#") or "Who runs it" in t for t in texts)
    assert ("The retrospective is the last event.", "") in found  # no context across a heading
    # "Its purpose ..." is scored with the sentence it refers to
    assert ("Its purpose is to improve the team.", "The retrospective is the last event.") in found
    # a list of long items stays one candidate per item
    assert "Mad, Sad, Glad: the feelings the sprint left behind." in texts


def test_an_acronym_the_course_never_writes_is_searched_with_the_course_name_it_stands_for(bot):
    from scrumbot.retrieve import Acronyms

    names = Acronyms(["The Product Owner orders the backlog.", "A Product Owner works with the "
                      "Release Train Engineer (RTE).", "Pass Online quickly."])
    assert names.spell_out("What does a PO do?") == "What does a PO (Product Owner) do?"
    assert names.spell_out("Who is the RTE?") == "Who is the RTE?"  # the course writes it
    assert names.spell_out("What is an XP team?") == "What is an XP team?"  # no such name
    # through the retriever, over the real index: what was searched is what the model reads
    retrieval = bot.retriever.retrieve("What does a PO do?")
    assert retrieval.query == "What does a PO (Product Owner) do?"
    bot.llm.calls.clear()
    bot.answer("What does a PO do?")
    assert "What does a PO (Product Owner) do?" in bot.llm.calls[-1][-1].content


def test_sentence_vectors_are_reused_across_questions_but_never_across_embedders(bot, fake_assistant):
    from scrumbot.retrieve import focus

    assert bot.retriever is bot.retriever  # one retriever per assistant: its cache lives on
    long = [Source("a.txt", "Kanban limits work in progress. Teams pull work when they have capacity. "
                   "Boards show the flow of work. The Product Owner orders the backlog.", 0.6)]
    q = "How does Kanban limit work?"
    mine, other = FakeEmbeddings(), FakeEmbeddings()
    cache: dict = {}
    focus(q, mine.embed_query(q), long, mine, budget=60, cache=cache)
    assert len(mine.embedded) == 4
    focus(q, mine.embed_query(q), long, mine, budget=60, cache=cache)
    assert len(mine.embedded) == 4  # the second question embeds nothing again
    focus(q, other.embed_query(q), long, other, budget=60, cache={})
    assert len(other.embedded) == 4  # another embedder's vectors are its own


def test_refusals_are_told_from_answers_that_say_not():
    from scrumbot.chain import is_refusal

    for refusal in ("The course material doesn't cover that.", "The passages do not mention the CEO.",
                    "The CEO of Braintrust Group is not mentioned in the course material.",
                    "I cannot answer that from the passages."):
        assert is_refusal(refusal), refusal
    for answer in ("Estimates are not given in hours.", "Kanban does not include sprints.",
                   "Story points are not provided by the Product Owner alone."):
        assert not is_refusal(answer), answer


def test_numbers_match_however_they_are_written():
    from scrumbot.guard import Grounding

    g = Grounding([Source("a.txt", "You need 1000 points and a 50 percent score to pass the exam.", 0.5)],
                  "What do I need to pass the exam?", "system")
    kept, dropped = g.check("You need 1,000 points and a 50% score to pass the exam.")
    assert dropped == [] and kept


class JudgedChatModel(EchoChatModel):
    """Echo answers, and log-probabilities for a one-token yes/no reply, the way an
    OpenAI-compatible chat model returns them (response_metadata["logprobs"])."""

    logprobs: bool | None = None
    p_yes: float = 0.5

    def _generate(self, messages, stop=None, run_manager=None, **kw):
        if not kw.get("logprobs"):
            return super()._generate(messages, stop, run_manager, **kw)
        import math

        self.calls.append(messages)
        top = [{"token": "Yes", "logprob": math.log(self.p_yes)}, {"token": "No", "logprob": math.log(1 - self.p_yes)}]
        from langchain_core.outputs import ChatGeneration, ChatResult

        return ChatResult(generations=[ChatGeneration(message=AIMessage(
            "Yes", response_metadata={"logprobs": {"content": [{"token": "Yes", "top_logprobs": top}]}}))])


@pytest.mark.parametrize("p_yes, refused", [(0.2, True), (0.8, False)])
def test_the_judge_refuses_below_its_threshold_and_says_so(settings, corpus, p_yes, refused):
    llm = JudgedChatModel(p_yes=p_yes)
    llm.calls = []
    bot = Assistant(settings.replace(min_score=0.2, min_answerable=0.5), embeddings=FakeEmbeddings(),
                    embedder_name="fake", llm=llm)
    bot.index([corpus])
    a = bot.answer(IN_SCOPE)
    assert a.refused is refused and a.scores["answerable"] == pytest.approx(p_yes, abs=1e-3)
    judged = llm.calls[0][-1].content
    assert judged.startswith("Course passages:") and judged.endswith("Reply yes or no.")
    if refused:
        assert a.reason == f"the passages do not answer it (p = {p_yes:.2f}, needs 0.50)" and len(llm.calls) == 1
    else:
        assert a.reason == "" and len(llm.calls) == 2  # the judge, then the answer


def test_the_judge_threshold_is_the_answering_models_own(settings, corpus):
    """Each model's P(yes) sits differently: a packaged model brings the threshold chosen for it
    on the dev split; an explicit SCRUMBOT_MIN_ANSWERABLE wins; any other model gets the default
    model's (until its own is calibrated)."""
    from scrumbot.models import PACKAGED

    small = PACKAGED["qwen2.5-coder-0.5b"].min_answerable
    assert Settings().answerable_threshold == 0.6
    assert Settings(model="qwen2.5-coder-0.5b").answerable_threshold == small != 0.6
    assert Settings(model="qwen2.5-coder-0.5b", min_answerable=0.7).answerable_threshold == 0.7
    assert Settings.from_env({"SCRUMBOT_MIN_ANSWERABLE": "0", "SCRUMBOT_MODEL": "qwen2.5-coder-0.5b"}).answerable_threshold == 0
    assert Settings(model="/models/mine.gguf").answerable_threshold == 0.6
    assert Settings(llm="openai", model="qwen2.5-coder-0.5b").answerable_threshold == 0.6
    assert Settings(model="qwen2.5-coder-0.5b").redacted()["min_answerable"] == small  # what status shows

    between = (small + 0.6) / 2  # refused under the default model's threshold, answered under its own
    for model, refused in (("qwen2.5-coder-1.5b", True), ("qwen2.5-coder-0.5b", False)):
        llm = JudgedChatModel(p_yes=between)
        llm.calls = []
        bot = Assistant(settings.replace(min_score=0.2, model=model), embeddings=FakeEmbeddings(),
                        embedder_name="fake", llm=llm)
        bot.index([corpus])
        a = bot.answer(IN_SCOPE)
        assert a.refused is refused, (model, a.reason)


def test_without_log_probabilities_the_judge_is_skipped(bot):
    """The echo model reports none: nothing is decided on a made-up probability."""
    a = bot.answer(IN_SCOPE)
    assert not a.refused and "answerable" not in a.scores and len(bot.llm.calls) == 1
