"""`LearnedRouter`: embed + predict + policy over a trained artifact folder.

An artifact folder holds `manifest.json` (models, feature spec, embedding digest, prices
seen, metrics), the LightGBM boosters as text files, the embedding projection and the
isotonic calibrators (inside the manifest). It is written by `openclaw-router train`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from router.config import Config, ModelSpec, Profile, resolve_path
from router.embedding import DIM
from router.features import FEATURE_NAMES, request_features
from router.policy import decide
from router.predictor import OutcomePredictor, Predictions
from router.request_view import estimate_tokens
from router.types import Constraints, Decision, LiveStats, RoutingRequest

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class LearnedRouter:
    """RouteLLM-style router over an artifact: `route(request, catalog=..., profile=...)`."""

    def __init__(self, predictor: OutcomePredictor, manifest: dict, path: Path | None = None):
        self.predictor = predictor
        self.manifest = manifest
        self.path = path
        self.models: list[str] = list(predictor.models)
        self._embedder = None

    def __getstate__(self) -> dict:
        # The ONNX session cannot be pickled; a copy opens its own on first use.
        return {**self.__dict__, "_embedder": None}

    @classmethod
    def load(cls, path: str | Path) -> "LearnedRouter":
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except OSError:
            raise FileNotFoundError(f"{path}: not a router artifact (no {MANIFEST})") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path / MANIFEST}: not valid JSON: {exc}") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path / MANIFEST}: format_version {manifest.get('format_version')!r}, this router reads {FORMAT_VERSION}")
        if tuple(manifest["features"]["cheap"]) != FEATURE_NAMES:
            raise ValueError(f"{path / MANIFEST}: trained on cheap features {manifest['features']['cheap']}, this router computes {list(FEATURE_NAMES)}")
        from router.embedding import _weights_digest, variant

        trained_on = manifest["features"]["embedding"].get("weights_digest")
        if trained_on != _weights_digest():
            # Other weights give other vectors: the boosters' splits no longer mean what they learnt.
            log.warning("%s was trained on embedding weights %s, this install has %s: retrain the router",
                        path, trained_on, _weights_digest())
        # Artifacts from before variants existed were trained on fp32 vectors.
        trained_variant = manifest["features"]["embedding"].get("variant", "fp32")
        if trained_variant != variant():
            # The variants' vectors differ by ~0.5 % cosine: predictions shift a little, they do not break.
            log.warning("%s was trained on %s embeddings, this process serves %s ones: set "
                        "OPENCLAW_EMBEDDING_VARIANT=%s or retrain the router", path, trained_variant, variant(), trained_variant)
        return cls(OutcomePredictor.load(path, manifest["predictor"]), manifest, path)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        self.manifest["predictor"] = self.predictor.save(path)
        (path / MANIFEST).write_text(json.dumps(self.manifest, indent=1, sort_keys=True))
        self.path = path
        return path

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self._embedder is None:
            from router.embedding import shared_embedder

            self._embedder = shared_embedder()
        return self._embedder.encode(list(texts))

    def featurize(self, requests: Sequence[RoutingRequest], embeddings: np.ndarray | None = None) -> np.ndarray:
        """[embedding | cheap features] rows, the predictor's input."""
        if embeddings is None:
            embeddings = self._embed([r.text for r in requests]) if requests else np.zeros((0, DIM), np.float32)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim == 1 and len(requests) == 1:
            embeddings = embeddings[None, :]
        if embeddings.shape != (len(requests), DIM):
            raise ValueError(f"embeddings must be one {DIM}-wide MiniLM vector per request ({len(requests)} x {DIM}), "
                             f"got shape {embeddings.shape}")
        return np.hstack([embeddings, request_features(requests)])

    def predict(self, requests: Sequence[RoutingRequest], embeddings: np.ndarray | None = None,
                catalog: Sequence[ModelSpec] | None = None) -> Predictions:
        """Predictions with one column per catalog entry (named `spec.name`; the artifact model
        is `spec.predictor_name`, prices and speeds come from the spec). Without a catalog:
        the artifact's models at the prices seen in training."""
        X = self.featurize(requests, embeddings)
        in_tok = np.array([r.input_tokens or estimate_tokens(r.text) for r in requests], dtype=np.float64)
        answers = np.array([r.answers for r in requests], dtype=np.float64)
        if catalog is None:
            caps = np.array([[r.max_output_tokens or np.inf] for r in requests], dtype=np.float64).reshape(len(requests), 1)
            return self.predictor.predict(X, in_tok, output_caps=caps, answers=answers)
        # What each model may write for each request: its max_tokens as that model is sent it.
        caps = np.array([[s.output_cap(r.max_output_tokens) or np.inf for s in catalog] for r in requests],
                        dtype=np.float64).reshape(len(requests), len(catalog))
        return self.predictor.predict(
            X,
            in_tok,
            models=[self.artifact_name(s) for s in catalog],
            prices=[(s.price.input_per_1m, s.price.output_per_1m) for s in catalog],
            ttft_s=[s.ttft_s for s in catalog],
            throughput_tps=[s.throughput_tps for s in catalog],
            names=[s.name for s in catalog],
            output_caps=caps,
            answers=answers,
        )

    def artifact_name(self, spec: ModelSpec) -> str:
        """The artifact model whose predictions `spec` uses: its own name once retraining on
        logged outcomes has learned it, else its configured proxy (`router_model`)."""
        return spec.name if spec.name in self.models else spec.predictor_name

    def unseen(self, catalog: Sequence[ModelSpec]) -> list[str]:
        """Catalog entries whose predictions come from the unseen-model prior."""
        return [s.name for s in catalog if self.artifact_name(s) not in self.models]

    def route(self, request: RoutingRequest, *, catalog: Sequence[ModelSpec], profile: Profile,
              constraints: Constraints = Constraints(), live: Mapping[str, LiveStats] | None = None,
              embedding: np.ndarray | None = None) -> Decision:
        if embedding is None:
            embedding = self._embed([request.text])[0]
        pred = self.predict([request], np.asarray(embedding, dtype=np.float32).reshape(1, -1), catalog)
        return decide(pred, request, catalog=catalog, profile=profile, constraints=constraints, live=live, embedding=embedding)


def default_artifact() -> Path:
    """The router shipped in the repository (`models/default`)."""
    return Path(__file__).resolve().parent.parent / "models" / "default"


def _places(value: str | Path, config: Config | None) -> list[Path]:
    """Where `value` may name an artifact, in order: as given (next to the config file, else from
    the working directory), then among the shipped ones (`models/default` from anywhere)."""
    first = resolve_path(config, str(value)) if config is not None else Path(value).expanduser()
    return list(dict.fromkeys((first, default_artifact().parent.parent / value)))


def find_artifact(value: str | Path, config: Config | None = None) -> Path:
    """A router artifact folder as a config or a reload request names it: next to the config
    file, in the working directory, or among the shipped ones (`models/default` from anywhere).
    Where none holds an artifact, the first place, for the error to name."""
    places = _places(value, config)
    return next((path for path in places if (path / MANIFEST).exists()), places[0])


def find_router_option(value: str | Path) -> Path:
    """The artifact an offline command's `--router` names, found as `serve` finds its own (the
    path as typed, then the shipped folder); neither holding one is an error naming both."""
    found = find_artifact(value)
    if not (found / MANIFEST).exists():
        tried = " nor in ".join(str(path.absolute()) for path in _places(value, None))
        raise FileNotFoundError(f"--router {value}: not a router artifact (no {MANIFEST} in {tried})")
    return found
