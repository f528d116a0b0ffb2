"""Python API for scoring with a POLAR reward model.

::

    scorer = PolarScorer.from_checkpoint("runs/sft/checkpoints", tokenizer="tokenizer.model")
    scorer.score(prompt, reference, ["answer A", "answer B"])          # -> [r_A, r_B]
    scorer.score_detailed(prompt, None, cands, references=[r1, r2])    # mean/std/min/max per candidate

Each (reference, candidate) pair becomes the released POLAR sequence (``encode_candidates``, the same
encoder ``data_tools build`` uses, each sequence on its own prompt length); the prompt, the references and
the candidates are measured once per request. All sequences of a call are scored together in
length-sorted micro-batches bounded by a token budget, and results come back in the caller's order.
Sequences that start alike (the candidates of one prompt and reference) share one row that computes
their common prefix once (``prefix_sharing``), on either attention spec.
With several references the reward is their mean (the paper's suggested variance reduction), and the
spread is reported by :meth:`PolarScorer.score_detailed`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from megatron_polar.checkpoint.model_loading import (
    LoadedModel,
    is_hf_directory,
    load_from_checkpoint,
    load_from_hf,
)
from megatron_polar.data.batch import RewardBatch
from megatron_polar.data.format import MIN_PROMPT_ROOM, RESERVED_TOKENS, encode_candidates
from megatron_polar.model.reward_model import PolarRewardModel
from megatron_polar.parallel import cpu_backend
from megatron_polar.scoring.collate import collate_sequences, plan_micro_batches
from megatron_polar.scoring.normalizer import RewardNormalizer
from megatron_polar.scoring.prefix_sharing import attention_weight, collate_shared_rows, plan_shared_rows
from megatron_polar.scoring.requests import ScoreRequest, Text, as_text, as_text_list, parse_row
from megatron_polar.utils.logging import get_logger

log = get_logger(__name__)


@dataclass
class CandidateScore:
    """The reward of one candidate, aggregated over the request's references.

    Attributes:
        reward: mean over references (normalised when normalisation is on).
        per_reference: the reward against each reference, in order.
        std, min, max: spread over references (std is 0 with one reference).
        truncated: whether any of its sequences lost tokens to truncation.
        num_tokens: tokens of its longest sequence.
    """

    reward: float
    per_reference: list[float]
    std: float
    min: float
    max: float
    truncated: bool
    num_tokens: int


@dataclass
class EncodedRequest:
    """Token sequences of one request, candidate-major: sequence ``c * n_refs + r``."""

    sequences: list[list[int]]
    truncated: list[bool]
    num_candidates: int
    num_references: int
    extra: dict[str, Any] = field(default_factory=dict)


def aggregate(encoded: EncodedRequest, rewards: Sequence[float]) -> list[CandidateScore]:
    """Fold per-sequence rewards of ``encoded`` into one :class:`CandidateScore` per candidate."""
    n_ref = encoded.num_references
    out = []
    for c in range(encoded.num_candidates):
        lo, hi = c * n_ref, (c + 1) * n_ref
        per_ref = [float(r) for r in rewards[lo:hi]]
        mean = math.fsum(per_ref) / n_ref
        std = math.sqrt(math.fsum((r - mean) ** 2 for r in per_ref) / n_ref)
        out.append(
            CandidateScore(
                reward=mean,
                per_reference=per_ref,
                std=std,
                min=min(per_ref),
                max=max(per_ref),
                truncated=any(encoded.truncated[lo:hi]),
                num_tokens=max(len(s) for s in encoded.sequences[lo:hi]),
            )
        )
    return out


class PolarScorer:
    """Scores (prompt, reference(s), candidates) with one reward model in this process.

    Not thread-safe for concurrent forward passes: the server gives the model to one worker thread;
    :meth:`encode` (tokenisation only) may run on any thread.

    Shared prefixes: ``share_prefix`` (default on, either spec) scores sequences sharing at least ``min_shared_prefix`` leading tokens in shared rows
    of at most ``shared_row_tokens`` tokens; see :mod:`megatron_polar.scoring.prefix_sharing`.
    """

    def __init__(
        self,
        model: PolarRewardModel,
        tokenizer: Any,
        *,
        max_length: int = 16384,
        max_response_length: int = 4096,
        batch_tokens: int = 16384,
        max_batch_sequences: int = 64,
        pad_multiple: int | None = None,
        batch_overhead_tokens: int = 256,
        explicit_mask: bool = False,
        share_prefix: bool | None = None,
        min_shared_prefix: int = 16,
        shared_row_tokens: int = 4096,
        normalizer: RewardNormalizer | None = None,
        name: str = "polar",
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_length = max_length
        self.max_response_length = min(
            max_response_length, (max_length - RESERVED_TOKENS - MIN_PROMPT_ROOM) // 2
        )
        self.batch_tokens = batch_tokens
        self.max_batch_sequences = max_batch_sequences
        # Rounding lengths up only helps GPU kernels; on the CPU every padded token is wasted compute.
        self.pad_multiple = pad_multiple or (16 if self.device.type == "cuda" else 1)
        self.batch_overhead_tokens = batch_overhead_tokens
        self.explicit_mask = explicit_mask
        # Shared rows run as variable-length attention on either spec (model/shared_prefix_attention.py).
        self.share_prefix = True if share_prefix is None else share_prefix
        self.min_shared_prefix = min_shared_prefix
        self.shared_row_tokens = shared_row_tokens
        self.attention_weight = attention_weight(model.config)
        self.normalizer = normalizer
        self.name = name

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        tokenizer: Any,
        device: str = "auto",
        precision: str | None = None,
        normalizer: RewardNormalizer | str | os.PathLike | None = None,
        transformer_impl: str | None = None,
        **options: Any,
    ) -> PolarScorer:
        """Load a megatron_polar checkpoint (any saved layout) for scoring in this process.

        Args:
            path: a checkpoint directory or a root holding ``iter_*`` directories (newest complete one).
            tokenizer: a loaded tokenizer (``megatron_polar.data.tokenizer.PolarTokenizer``) or its path.
            device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
            precision: ``fp32`` | ``bf16`` | ``fp16``; default bf16 on a GPU and fp32 on the CPU.
            normalizer: a :class:`RewardNormalizer` or the path of its JSON.
            transformer_impl: layer spec, overriding the checkpoint's: ``auto`` (Transformer Engine when
                usable), ``transformer_engine`` or ``local`` (PyTorch SDPA; takes shared-prefix rows).
            options: keyword arguments of :class:`PolarScorer` (``batch_tokens``, ``max_length``, ...).
        """
        loaded = load_from_checkpoint(path, tokenizer, device, precision, transformer_impl)
        return cls._finish_load(loaded, path, normalizer, options)

    @classmethod
    def from_hf(
        cls,
        directory: str | os.PathLike,
        tokenizer: Any = None,
        device: str = "auto",
        precision: str | None = None,
        normalizer: RewardNormalizer | str | os.PathLike | None = None,
        transformer_impl: str | None = None,
        **options: Any,
    ) -> PolarScorer:
        """Load an exported Hugging Face directory (``llama`` or ``internlm2`` format) for scoring.

        The weights go through the same layout mapping as ``convert import-hf``, in memory. Without
        ``tokenizer`` the directory's own tokenizer is used (``tokenizer.json`` or ``tokenizer.model``),
        with the reward and split token ids that ``config.json`` records. Other arguments as
        :meth:`from_checkpoint`.
        """
        loaded = load_from_hf(directory, tokenizer, device, precision, transformer_impl)
        return cls._finish_load(loaded, directory, normalizer, options)

    @classmethod
    def load(cls, model: str | os.PathLike, tokenizer: Any = None, **kwargs: Any) -> PolarScorer:
        """:meth:`from_hf` for an exported HF directory, else :meth:`from_checkpoint` (which needs
        ``tokenizer``)."""
        if is_hf_directory(model):
            return cls.from_hf(model, tokenizer, **kwargs)
        if tokenizer is None:
            raise ValueError(f"{model} is a megatron_polar checkpoint: give its tokenizer")
        return cls.from_checkpoint(model, tokenizer, **kwargs)

    @classmethod
    def _finish_load(
        cls,
        loaded: LoadedModel,
        path: str | os.PathLike,
        normalizer: RewardNormalizer | str | os.PathLike | None,
        options: dict[str, Any],
    ) -> PolarScorer:
        cfg, model = loaded.cfg, loaded.model
        options.setdefault("max_length", min(16384, cfg.model.max_position_embeddings))
        options.setdefault("name", str(path))
        if normalizer is not None and not isinstance(normalizer, RewardNormalizer):
            normalizer = RewardNormalizer.load(normalizer)
        param = next(model.parameters())
        log.info("scorer: %s (%s) on %s (%s)", path, loaded.source, param.device, cfg.train.precision)
        return cls(model, loaded.tokenizer, normalizer=normalizer, **options)

    # ------------------------------------------------------------------ encoding
    def encode(self, request: ScoreRequest) -> EncodedRequest:
        """Token sequences for every (candidate, reference) pair, candidate-major.

        Each sequence follows the released training algorithm for one candidate, so a candidate's ids do
        not depend on the other candidates of the request.
        """
        per_ref = [
            encode_candidates(
                self.tokenizer,
                request.prompt,
                ref,
                request.candidates,
                max_length=self.max_length,
                max_response_length=self.max_response_length,
                wrapper=request.wrapper,
                shared_prompt=False,
            )
            for ref in request.references
        ]
        sequences, truncated = [], []
        for c in range(len(request.candidates)):
            for seqs in per_ref:
                sequences.append(seqs[c].ids)
                truncated.append(seqs[c].info.truncated)
        return EncodedRequest(sequences, truncated, len(request.candidates), len(request.references))

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def forward_sequences(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """Raw rewards of token sequences (each ending with the reward token), in the given order."""
        if not sequences:
            return []
        with cpu_backend.device_mode():  # modes are per thread: the server's worker needs it too
            return self._forward_sequences(sequences)

    def _forward_sequences(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        rewards = [0.0] * len(sequences)
        if self.share_prefix:
            rows, alone = plan_shared_rows(
                sequences, self.min_shared_prefix, self.shared_row_tokens, self.attention_weight
            )
        else:
            rows, alone = [], list(range(len(sequences)))
        for plan in self._plan([len(sequences[i]) for i in alone]):
            idx = [alone[j] for j in plan]
            batch = collate_sequences(
                [sequences[i] for i in idx], pad_multiple=self.pad_multiple, explicit_mask=self.explicit_mask
            )
            self._run(batch, idx, rewards)
        for plan in self._plan([r.width for r in rows]):
            batch, idx = collate_shared_rows(sequences, [rows[j] for j in plan], self.pad_multiple)
            self._run(batch, idx, rewards)
        return rewards

    def _plan(self, lengths: list[int]) -> list[list[int]]:
        return plan_micro_batches(
            lengths,
            self.batch_tokens,
            self.max_batch_sequences,
            self.pad_multiple,
            self.batch_overhead_tokens,
        )

    def _run(self, batch: RewardBatch, idx: Sequence[int], rewards: list[float]) -> None:
        out = self.model(batch.to(self.device)).view(-1).float().cpu().tolist()
        for i, r in zip(idx, out):
            rewards[i] = r

    # ------------------------------------------------------------------ scoring
    def _use_normalizer(self, normalize: bool | None) -> RewardNormalizer | None:
        if normalize and self.normalizer is None:
            raise ValueError("normalize=True but this scorer has no normaliser: call calibrate() first")
        return self.normalizer if normalize is None or normalize else None

    def finish(
        self, encoded: EncodedRequest, raw: Sequence[float], normalize: bool | None = None
    ) -> list[CandidateScore]:
        """Normalise (if on) and aggregate the raw rewards of one encoded request."""
        norm = self._use_normalizer(normalize)
        rewards = [norm.apply(r) for r in raw] if norm else list(raw)
        return aggregate(encoded, rewards)

    def score_requests(
        self, requests: Sequence[ScoreRequest], normalize: bool | None = None
    ) -> list[list[CandidateScore]]:
        """Score many requests in one length-sorted pass; one list of candidate scores per request."""
        encoded = [self.encode(r) for r in requests]
        flat = [s for e in encoded for s in e.sequences]
        raw = self.forward_sequences(flat)
        out, pos = [], 0
        for e in encoded:
            n = len(e.sequences)
            out.append(self.finish(e, raw[pos : pos + n], normalize))
            pos += n
        return out

    def score_detailed(
        self,
        prompt: Text,
        reference: Text | None = None,
        candidates: Sequence[Text] = (),
        *,
        references: Sequence[Text] | None = None,
        normalize: bool | None = None,
        wrapper: str | None = None,
    ) -> list[CandidateScore]:
        """One :class:`CandidateScore` per candidate (mean, spread and truncation over references).

        Give ``reference`` or ``references``; texts may be strings or message lists. ``normalize``:
        None applies the scorer's normaliser when it has one, True requires one, False returns raw.
        """
        if (reference is None) == (references is None):
            raise ValueError("give exactly one of reference= or references=")
        refs = as_text_list(list(references), "references") if references is not None else None
        request = ScoreRequest(
            prompt=as_text(prompt, "prompt"),
            references=refs if refs is not None else [as_text(reference, "reference")],
            candidates=as_text_list(list(candidates), "candidates"),
            wrapper=wrapper,
        )
        return self.score_requests([request], normalize)[0]

    def score(
        self,
        prompt: Text,
        reference: Text | None = None,
        candidates: Sequence[Text] = (),
        *,
        references: Sequence[Text] | None = None,
        normalize: bool | None = None,
        wrapper: str | None = None,
    ) -> list[float]:
        """One reward per candidate (the mean over references); see :meth:`score_detailed`."""
        scores = self.score_detailed(
            prompt, reference, candidates, references=references, normalize=normalize, wrapper=wrapper
        )
        return [s.reward for s in scores]

    # ------------------------------------------------------------------ normalisation
    def calibrate(
        self, samples: Iterable[ScoreRequest | dict], save_to: str | os.PathLike | None = None
    ) -> RewardNormalizer:
        """Fit mean/std of the raw per-sequence rewards over ``samples`` and use it from now on.

        ``samples`` are :class:`ScoreRequest` objects or rows as the batch CLI reads them. The fitted
        normaliser is stored on the scorer (``normalize=None`` then applies it) and saved as JSON to
        ``save_to`` when given.
        """
        requests = [s if isinstance(s, ScoreRequest) else parse_row(s) for s in samples]
        scores = self.score_requests(requests, normalize=False)
        raw = [r for req in scores for cand in req for r in cand.per_reference]
        self.normalizer = RewardNormalizer.fit(raw, model=self.name)
        if save_to is not None:
            self.normalizer.save(save_to)
        log.info("calibrated on %d rewards: mean %.4f std %.4f", len(raw), *self._norm_stats())
        return self.normalizer

    def _norm_stats(self) -> tuple[float, float]:
        assert self.normalizer is not None
        return self.normalizer.mean, self.normalizer.std

    def describe(self) -> dict[str, Any]:
        """What ``/health`` and reports say about this scorer."""
        return {
            "model": self.name,
            "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "max_length": self.max_length,
            "max_response_length": self.max_response_length,
            "normalized": self.normalizer is not None,
        }
