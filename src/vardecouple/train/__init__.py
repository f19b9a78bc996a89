"""The train stage: one micro-step (:mod:`.step`), the loop (:mod:`.loop`), exact
checkpoints (:mod:`.checkpoint`), and the Hugging Face ``Trainer`` hook (:mod:`.hf`)."""

from vardecouple.train.loop import train
from vardecouple.train.step import TrainConfig

__all__ = ["TrainConfig", "train"]
