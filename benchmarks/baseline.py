"""The naive pipeline a user would copy from a LangChain tutorial: the baseline scrumbot must beat.

    TextLoader -> RecursiveCharacterTextSplitter(1000, 200) -> Chroma.from_documents
    -> top-4 similarity -> the "use the following pieces of context" prompt -> the same LLM

Nothing here is tuned: the prompt is LangChain's own stuff-chain chat prompt, the store keeps
Chroma's default distance, there is no refusal gate and no follow-up handling (the tutorial's
RetrievalQA sees each question alone). Its answer counts as a refusal when it says it does not
know, the way a reader would take it.

`scrumbot eval --baseline` runs it beside scrumbot on the same questions, files, embedder and
model. Alone: python benchmarks/baseline.py "Which cert suits a business analyst?"
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.chat_models import BaseChatModel

from scrumbot.api import Answer
from scrumbot.chain import is_refusal
from scrumbot.retrieve import Source

# "I don't know", and the ways small models phrase it when the context lacks the answer.
_DONT_KNOW = re.compile(
    r"\b(i (do ?n[o']t|do not) know|(is|are) not (mentioned|provided|specified|stated|given)|"
    r"(does|do) ?n[o']t (provide|mention|specify|say|contain|include)|"
    r"(does|do) not (provide|mention|specify|say|contain|include)|no information)\b",
    re.I,
)


def says_dont_know(text: str) -> bool:
    return is_refusal(text) or bool(_DONT_KNOW.search(text.replace("\u2019", "'")))


def _load(path: Path) -> list[Document]:
    from langchain_community import document_loaders as dl

    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return dl.PyPDFLoader(str(path)).load()
    if suffix == ".docx":
        return dl.Docx2txtLoader(str(path)).load()
    if suffix in (".html", ".htm"):
        return dl.BSHTMLLoader(str(path)).load()
    return dl.TextLoader(str(path), encoding="utf-8", autodetect_encoding=True).load()


class NaivePipeline:
    """RetrievalQA, tutorial style, written in LCEL (RetrievalQA itself is deprecated)."""

    k = 4

    def __init__(self, files: list[Path], embeddings: Embeddings, llm: BaseChatModel | None):
        if llm is None:
            raise ValueError("The baseline needs an LLM (SCRUMBOT_LLM=llamacpp or openai).")
        import chromadb
        from chromadb.config import Settings as ChromaSettings
        from langchain_chroma import Chroma
        from langchain_classic.chains.question_answering.stuff_prompt import CHAT_PROMPT
        from langchain_core.output_parsers import StrOutputParser
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        docs = [d for f in files for d in _load(Path(f))]
        splits = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200).split_documents(docs)
        for d in splits:
            d.metadata["source"] = Path(d.metadata.get("source", "?")).name
        client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
        self.vectorstore = Chroma.from_documents(splits, embeddings, client=client,
                                                 collection_name=f"baseline-{uuid.uuid4().hex[:8]}")
        self.chunks = len(splits)
        self.chain = CHAT_PROMPT | llm | StrOutputParser()

    def answer(self, question: str, history=None) -> Answer:
        # the tutorial chain sees each question alone: no history
        hits = self.vectorstore.similarity_search_with_score(question, k=self.k)
        context = "\n\n".join(d.page_content for d, _ in hits)
        text = self.chain.invoke({"context": context, "question": question}).strip()
        sources = [Source(source=d.metadata["source"], text=d.page_content, score=round(1 - s / 2, 4))
                   for d, s in hits]  # Chroma's default L2 on unit vectors: 1 - d²/2 is the cosine
        refused = says_dont_know(text)
        return Answer(text, refused, [] if refused else sources, question)


def main() -> None:
    import sys

    from scrumbot import Assistant

    bot = Assistant()
    files = [Path(root) / rel for root, names in bot.store.status()["sources"].items() for rel in names]
    naive = NaivePipeline(files or sorted(bot.settings.corpus_dir.glob("*")), bot.embeddings, bot.llm)
    for question in sys.argv[1:] or ["Which cert suits a business analyst?"]:
        a = naive.answer(question)
        print(f"Q: {question}\nA: {a.text}\n   refused={a.refused} sources={[s.source for s in a.sources]}")


if __name__ == "__main__":
    main()
