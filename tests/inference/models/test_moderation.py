"""The safety check's decision: the rule itself, its agreement with diffusers'
``StableDiffusionSafetyChecker.forward``, and the tiny checkers whose decision the tests set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compose_api import contract, profiles
from compose_inference import errors, moderation, tiny


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photos shipped with scikit-image."""
    from skimage import data

    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass")
    return {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in names}


@pytest.fixture(scope="module")
def rocket_checker(
    tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Image.Image]
) -> Path:
    """Flags the rocket photo and passes every other photo."""
    folder = tmp_path_factory.mktemp("rocket-checker")
    others = [image for name, image in photos.items() if name != "rocket"]
    return tiny.build_safety_checker(folder, flagged=[photos["rocket"]], passed=others)


# -- the rule ------------------------------------------------------------------------------------


def test_an_image_is_flagged_when_a_concept_scores_above_zero() -> None:
    verdict = moderation.decide([0.30, 0.10, 0.26], [0.25, 0.20, 0.27], [0.0], [0.5])
    assert verdict.flagged
    assert verdict.concepts == (0,)
    assert verdict.top_score == pytest.approx(0.05)
    assert verdict.describe() == "nsfw concepts 0"
    quiet = moderation.decide([0.20, 0.10], [0.25, 0.20], [0.0], [0.5])
    assert not quiet.flagged and quiet.concepts == ()


def test_scores_are_rounded_to_three_decimals_before_the_test() -> None:
    # 0.2004 - 0.2 rounds to 0.0, which is not above 0; 0.2006 - 0.2 rounds to 0.001.
    assert not moderation.decide([0.2004], [0.2], [0.0], [1.0]).flagged
    assert moderation.decide([0.2006], [0.2], [0.0], [1.0]).flagged


def test_a_special_care_match_makes_every_concept_stricter_but_never_flags_alone() -> None:
    near = [0.195]  # 0.005 below its threshold
    assert not moderation.decide(near, [0.2], [0.1], [0.5]).flagged
    boosted = moderation.decide(near, [0.2], [0.6], [0.5])
    assert boosted.special_care == (0,)
    assert boosted.concepts == (0,)  # -0.005 + 0.01 > 0
    assert boosted.describe() == "nsfw concepts 0 (special care: 0)"
    alone = moderation.decide([0.0], [0.2], [0.9, 0.9], [0.5, 0.5])
    assert alone.special_care == (0, 1) and not alone.flagged


def test_the_adjustment_moves_every_threshold_by_its_value() -> None:
    cos, threshold = [0.21], [0.2]
    assert moderation.decide(cos, threshold, [0.0], [1.0]).flagged
    assert not moderation.decide(cos, threshold, [0.0], [1.0], adjustment=-0.02).flagged
    assert moderation.decide([0.19], threshold, [0.0], [1.0], adjustment=0.02).flagged
    # The adjustment reaches the special-care test as well.
    special = moderation.decide([0.195], threshold, [0.49], [0.5], adjustment=0.02)
    assert special.special_care == (0,)


def test_our_decision_is_diffusers_decision(photos: dict[str, Image.Image], tmp_path: Path) -> None:
    """With adjustment 0, flagged <=> ``StableDiffusionSafetyChecker.forward`` says NSFW, with
    random concepts and thresholds placed among the photos' own cosines so that both outcomes
    occur."""
    folder = tiny.build_safety_checker(tmp_path / "checker")
    checker = moderation.SafetyChecker.load(folder)
    model = checker.model
    images = list(photos.values())
    embeddings = moderation.embed(model, checker.processor, images)
    generator = torch.Generator().manual_seed(3)
    outcomes: set[bool] = set()
    for _ in range(6):
        with torch.no_grad():
            model.concept_embeds.copy_(torch.randn(model.concept_embeds.shape, generator=generator))
            model.special_care_embeds.copy_(
                torch.randn(model.special_care_embeds.shape, generator=generator)
            )
            concepts = torch.nn.functional.normalize(model.concept_embeds, dim=-1)
            special = torch.nn.functional.normalize(model.special_care_embeds, dim=-1)
            # Concept 0 at the median cosine of the photos, 1 and 2 near the top, the others
            # never; special care at the median, so that its 0.01 matters for some photos.
            cosines = embeddings @ concepts.T
            thresholds = torch.full((concepts.shape[0],), tiny.SAFETY_NEVER)
            thresholds[0] = cosines[:, 0].median()
            thresholds[1:3] = cosines[:, 1:3].quantile(0.9, dim=0)
            model.concept_embeds_weights.copy_(thresholds)
            model.special_care_embeds_weights.copy_((embeddings @ special.T).median(dim=0).values)
        ours = [verdict.flagged for verdict in checker.judge(images)]
        pixels = checker.processor(images=images, return_tensors="pt")["pixel_values"]
        blank = np.zeros((len(images), 8, 8, 3))
        _, theirs = model(clip_input=pixels, images=blank)
        assert ours == [bool(flag) for flag in theirs]
        outcomes.update(ours)
    assert outcomes == {True, False}


# -- the tiny checkers ---------------------------------------------------------------------------


def test_the_tiny_checker_is_saved_in_the_pipeline_repository_layout(
    tiny_models: dict[str, Path],
) -> None:
    folder = tiny_models["safety_checker"]
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert files == {
        "safety_checker/config.json",
        "safety_checker/model.safetensors",
        "feature_extractor/preprocessor_config.json",
    }
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker

    model = StableDiffusionSafetyChecker.from_pretrained(str(folder / "safety_checker"))
    assert tuple(model.concept_embeds.shape) == (17, tiny.SAFETY_PROJECTION)
    assert tuple(model.special_care_embeds.shape) == (3, tiny.SAFETY_PROJECTION)


def test_the_smoke_checker_flags_nothing_and_a_flag_all_checker_everything(
    tiny_models: dict[str, Path], photos: dict[str, Image.Image], tmp_path: Path
) -> None:
    images = list(photos.values())
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    smoke = moderation.SafetyChecker.load(tiny_models["safety_checker"])
    assert [v.flagged for v in smoke.judge([*images, noise])] == [False] * (len(images) + 1)
    flag_all = moderation.SafetyChecker.load(
        tiny.build_safety_checker(tmp_path / "all", flag_all=True)
    )
    verdicts = flag_all.judge([*images, noise])
    assert all(v.flagged and v.concepts == (0,) for v in verdicts)


def test_a_checker_flags_exactly_the_images_it_was_built_to_flag(
    rocket_checker: Path, photos: dict[str, Image.Image]
) -> None:
    checker = moderation.SafetyChecker.load(rocket_checker)
    verdicts = dict(zip(photos, checker.judge(list(photos.values())), strict=True))
    assert {name for name, v in verdicts.items() if v.flagged} == {"rocket"}
    assert verdicts["rocket"].concepts == (0,)


def test_a_checker_cannot_be_asked_to_flag_an_image_it_must_pass(
    photos: dict[str, Image.Image], tmp_path: Path
) -> None:
    rocket = photos["rocket"]
    with pytest.raises(ValueError, match=r"flagged\[0\]: a passed image has cosine 1\.0"):
        tiny.build_safety_checker(tmp_path / "x", flagged=[rocket], passed=[rocket])


def test_the_adjustment_setting_reaches_the_loaded_checker(
    rocket_checker: Path, photos: dict[str, Image.Image]
) -> None:
    plain = moderation.SafetyChecker.load(rocket_checker)
    scores = {
        n: v.top_score for n, v in zip(photos, plain.judge(list(photos.values())), strict=True)
    }
    margin = scores["rocket"]  # how far above its threshold the rocket is
    assert margin > 0
    lenient = moderation.SafetyChecker.load(rocket_checker, adjustment=-(margin + 0.002))
    assert not lenient.judge([photos["rocket"]])[0].flagged
    nearest = max(score for name, score in scores.items() if name != "rocket")
    strict = moderation.SafetyChecker.load(rocket_checker, adjustment=-nearest + 0.002)
    flagged = [
        n for n, v in zip(photos, strict.judge(list(photos.values())), strict=True) if v.flagged
    ]
    assert "rocket" in flagged and len(flagged) >= 2


def test_the_checker_folder_layout_loads_too(
    rocket_checker: Path, photos: dict[str, Image.Image], tmp_path: Path
) -> None:
    """``CompVis/stable-diffusion-safety-checker`` keeps config, weights and processor config
    side by side."""
    flat = tmp_path / "flat"
    shutil.copytree(rocket_checker / "safety_checker", flat)
    shutil.copy(rocket_checker / "feature_extractor" / "preprocessor_config.json", flat)
    checker = moderation.SafetyChecker.load(flat)
    assert [v.flagged for v in checker.judge([photos["rocket"], photos["coffee"]])] == [True, False]


def test_a_folder_without_the_processor_config_is_refused(
    rocket_checker: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(rocket_checker / "safety_checker", bare)
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config\.json"):
        moderation.SafetyChecker.load(bare)


def test_screening_names_each_flagged_image_and_no_image_data(
    rocket_checker: Path, photos: dict[str, Image.Image]
) -> None:
    checker = moderation.SafetyChecker.load(rocket_checker)
    checker.screen([("spec.inputs.person.uri", photos["astronaut"])])  # passes: no error
    with pytest.raises(errors.ContentRejected) as info:
        checker.screen(
            [
                ("spec.inputs.person.uri", photos["astronaut"]),
                ("spec.inputs.place.uri", photos["rocket"]),
            ]
        )
    assert info.value.exit_code == contract.ExitCode.CONTENT_REJECTED
    assert info.value.message == (
        "spec.inputs.place.uri: flagged by the safety check (nsfw concepts 0)"
    )


# -- the profile's settings ----------------------------------------------------------------------


def _profile(**fields: object) -> dict[str, object]:
    return {
        "name": "p",
        "models": {"base": {"uri": "/models/base"}, "safety_checker": {"uri": "/models/sc"}},
        "licence": {"name": "x"},
        **fields,
    }


def test_the_safety_block_defaults_to_checking_the_output_only() -> None:
    profile = profiles.ModelProfile.model_validate(_profile(safety={}))
    assert profile.safety is not None
    assert (profile.safety.output, profile.safety.inputs, profile.safety.adjustment) == (
        True,
        False,
        0.0,
    )
    assert profile.safety_component() == "safety_checker"
    off = profiles.ModelProfile.model_validate(_profile(safety={"output": False}))
    assert off.safety_component() is None
    assert profiles.ModelProfile.model_validate(_profile()).safety_component() is None


@pytest.mark.parametrize(
    ("safety", "message"),
    [
        ({"component": "checker"}, "safety.component: 'checker' is not one of models"),
        ({"adjustment": 0.5}, "safety.adjustment"),
        ({"output": "sometimes"}, "safety.output"),
        ({"threshold": 0.2}, "safety.threshold"),
    ],
)
def test_bad_safety_settings_are_refused_naming_the_field(
    safety: dict[str, object], message: str
) -> None:
    import yaml

    with pytest.raises(ValueError, match=message.replace("(", r"\(")) as info:
        profiles.load_profiles(yaml.safe_dump([_profile(safety=safety)]))
    assert str(info.value).startswith("profiles[p]")


def test_a_check_that_is_off_needs_no_checker_component() -> None:
    fields = _profile(safety={"component": "missing", "output": False, "inputs": False})
    assert profiles.ModelProfile.model_validate(fields).safety_component() is None
