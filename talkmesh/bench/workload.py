"""What the benchmark asks the mesh to say, and how."""

from __future__ import annotations

from dataclasses import dataclass

from talkmesh.common.registry import DEFAULT_RENDERER_BACKEND
from talkmesh.v1 import gateway_pb2 as gpb

#: Short texts of one sentence for the latency series.
TEXTS = (
    "Hello there.",
    "Good morning, how can I help you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to bring your notebook to the next lesson.",
    "Your order has shipped and should arrive on Tuesday.",
    "Let's practise the vowel sounds together, slowly.",
    "Breathe in, and then say the word: banana.",
    "I am sorry, I did not quite catch that. Could you repeat it?",
    "Mountains rise above the valley where the river bends.",
    "Thank you for calling. Your call is important to us.",
)
#: The long text of the single-stream and concurrency runs (about 20 s of speech).
PARAGRAPH = (
    "Welcome to the lesson. Today we practise the sounds p, b and m, which close the lips. "
    "Listen carefully, then repeat after me. Papa bought a big map. Mom made bread with butter. "
    "Well done! Now let's try a longer sentence, and remember to breathe between the phrases. "
    "When you are ready, press the button and speak clearly into the microphone."
)


@dataclass(frozen=True)
class Workload:
    """The knobs of a speak benchmark."""

    backend: str = DEFAULT_RENDERER_BACKEND
    size: str = "512"
    #: sequential requests of the latency series
    requests: int = 30
    #: concurrency levels of the sweep (it stops at the first level below real time)
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 20, 24)

    def request(self, text: str, i: int) -> gpb.SpeakRequest:
        from talkmesh.client import TalkmeshClient

        return TalkmeshClient.request(text, size=self.size, backend=self.backend, request_id=f"bench-{i}")
