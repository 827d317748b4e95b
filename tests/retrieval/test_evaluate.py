"""`manage.py evaluate`: the metrics on hand-computed rankings, the near-duplicate copies, and the whole
command on a tiny generated labelled set (real offline-profile models, a database of its own)."""

import io
import json
import random
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from PIL import Image as PILImage
from PIL import ImageDraw

from gallery.models import Image
from retrieval.models import Embedding
from bench.evaluation import (
    COPY_CROP_SIDE,
    COPY_JPEG_QUALITY,
    COPY_SCALE,
    GOAL_PRECISION_AT_10,
    EvaluationError,
    EvaluationReport,
    PolicyScores,
    average_precision_at_k,
    captions_read,
    copy_recipe,
    evaluation_goals,
    near_duplicate_copy,
    precision_at_k,
    recall_at_k,
)

# --- metrics, by hand --------------------------------------------------------------------------
# Ranking 1..10; the relevant ids are 1, 3, 6 and 42 (42 is never retrieved).
RANKED = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
RELEVANT = {1, 3, 6, 42}


def test_precision_at_k_by_hand():
    assert precision_at_k(RANKED, RELEVANT, 1) == 1.0
    assert precision_at_k(RANKED, RELEVANT, 2) == 0.5
    assert precision_at_k(RANKED, RELEVANT, 5) == pytest.approx(2 / 5)
    assert precision_at_k(RANKED, RELEVANT, 10) == pytest.approx(3 / 10)
    # Places the ranking does not fill count as misses: 3 relevant of 20 places.
    assert precision_at_k(RANKED, RELEVANT, 20) == pytest.approx(3 / 20)
    assert precision_at_k([], RELEVANT, 10) == 0.0
    with pytest.raises(ValueError):
        precision_at_k(RANKED, RELEVANT, 0)


def test_average_precision_at_k_by_hand():
    # Hits at places 1, 3, 6: precisions 1/1, 2/3, 3/6; four relevant ids, so divided by 4.
    assert average_precision_at_k(RANKED, RELEVANT, 50) == pytest.approx((1 + 2 / 3 + 3 / 6) / 4)
    # Cut at k=3: hits at 1 and 3; min(4, 3) = 3 possible hits.
    assert average_precision_at_k(RANKED, RELEVANT, 3) == pytest.approx((1 + 2 / 3) / 3)
    # All relevant ids first: 1.0, whatever follows.
    assert average_precision_at_k([3, 1, 9, 8], {1, 3}, 50) == 1.0
    assert average_precision_at_k([9, 3, 1], {1, 3}, 50) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert average_precision_at_k(RANKED, set(), 50) == 0.0
    assert average_precision_at_k([], {1}, 50) == 0.0


def test_recall_at_k_by_hand():
    assert recall_at_k(RANKED, {1}, 1) == 1.0
    assert recall_at_k(RANKED, {3}, 1) == 0.0
    assert recall_at_k(RANKED, {3}, 10) == 1.0
    assert recall_at_k(RANKED, RELEVANT, 10) == pytest.approx(3 / 4)
    assert recall_at_k(RANKED, {11}, 10) == 0.0
    with pytest.raises(ValueError):
        recall_at_k(RANKED, set(), 10)


# --- near-duplicate copies ---------------------------------------------------------------------

def test_a_goal_reached_to_the_last_bit_of_a_mean_is_met():
    """3 categories of 8 images, every query at 0.7: the mean, 0.6999999999999998, was "not met"."""
    reached = statistics.fmean([GOAL_PRECISION_AT_10] * 24)
    assert reached < GOAL_PRECISION_AT_10  # what the float sum gives
    scores = [PolicyScores(policy, reached, 0.5, None, None) for policy in ("semantic only", "hybrid")]
    report = EvaluationReport(profile="offline", models={}, categories=3, images=24, category_queries=24,
                              near_duplicate_queries=0, distractors=0, caption_queries=0, scores=scores)
    goals = evaluation_goals(report)
    assert goals[0].met is True and goals[0].measured == "0.700" and goals[1].met is True
    lower = [PolicyScores("semantic only", 0.7, 0.5, None, None), PolicyScores("hybrid", 0.699, 0.5, None, None)]
    assert [goal.met for goal in evaluation_goals(replace(report, scores=lower))][:2] == [False, False]


def test_near_duplicate_copies_are_seeded_altered_jpegs_within_the_ranges():
    picture = PILImage.new("RGB", (200, 100), "white")
    ImageDraw.Draw(picture).ellipse((60, 20, 140, 80), fill=(220, 30, 30))
    recipes = [copy_recipe(random.Random(7)) for _ in range(2)]
    assert recipes[0] == recipes[1]  # same seed, same copy
    assert copy_recipe(random.Random(8)) != recipes[0]
    rng = random.Random(0)
    for _ in range(20):
        recipe = copy_recipe(rng)
        assert COPY_CROP_SIDE[0] <= recipe.crop_side <= COPY_CROP_SIDE[1]
        assert COPY_JPEG_QUALITY[0] <= recipe.jpeg_quality <= COPY_JPEG_QUALITY[1]
        data = near_duplicate_copy(picture, recipe)
        assert near_duplicate_copy(picture, recipe) == data  # deterministic
        copy = PILImage.open(io.BytesIO(data))
        assert copy.format == "JPEG"
        scale = recipe.crop_side * recipe.scale
        assert copy.width == pytest.approx(200 * scale, abs=1.5)
        assert copy.height == pytest.approx(100 * scale, abs=1.5)
        assert COPY_CROP_SIDE[0] * COPY_SCALE[0] * 100 - 1 <= copy.height <= COPY_CROP_SIDE[1] * 100 + 1


def test_without_captions_no_caption_bar_is_shown():
    """A bar "caption queries 0/0" told the user of work that never ran."""
    from contextlib import nullcontext

    from bench.evaluation import _caption_queries

    shown: list[str] = []

    def progress(description, total):
        shown.append(description)
        return nullcontext(None)

    hits = _caption_queries(captions=[], imported=None, ready=set(), models=None, progress=progress)
    assert shown == [] and all(values == [] for values in hits.values())


def test_captions_file_format(tmp_path):
    good = tmp_path / "captions.tsv"
    good.write_text("# comment\nred/a.png\ta red circle\n\nblue/b.png\t  a blue square \n")
    assert captions_read(good) == [("red/a.png", "a red circle"), ("blue/b.png", "a blue square")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("red/a.png a red circle\n")
    with pytest.raises(EvaluationError, match="bad.tsv:1"):
        captions_read(bad)


# --- the command, end to end ---------------------------------------------------------------------

def shape_picture(kind: str, variant: int) -> PILImage.Image:
    """Red discs, blue squares, green stripes: each variant moves and resizes the shape."""
    picture = PILImage.new("RGB", (128, 128), "white")
    draw = ImageDraw.Draw(picture)
    offset, size = 6 * variant, 50 + 8 * variant
    if kind == "red_circles":
        draw.ellipse((14 + offset, 20 + offset // 2, 14 + offset + size, 20 + offset // 2 + size), fill=(220, 20, 30))
    elif kind == "blue_squares":
        draw.rectangle((20 + offset // 2, 12 + offset, 20 + offset // 2 + size, 12 + offset + size), fill=(20, 40, 210))
    else:
        for x in range(variant % 2 * 6, 128, 16 + 2 * variant):
            draw.rectangle((x, 0, x + 7, 127), fill=(20, 170, 40))
    return picture


@pytest.fixture
def labelled_set(tmp_path) -> Path:
    """3 categories × 4 images (+ a stray file at the top, which is not a category)."""
    root = tmp_path / "labelled"
    for kind in ("red_circles", "blue_squares", "green_stripes"):
        (root / kind).mkdir(parents=True)
        for variant in range(4):
            shape_picture(kind, variant).save(root / kind / f"{kind}-{variant}.png")
    (root / "README.txt").write_text("not an image, not a category\n")
    (root / "captions.tsv").write_text(
        "red_circles/red_circles-0.png\ta red circle\nblue_squares/blue_squares-1.png\ta blue square\n")
    return root


@pytest.fixture
def isolated_var(settings, tmp_path, media_root):
    settings.IMAGINAITION_MODEL_PROFILE = "offline"
    settings.VAR_DIR = tmp_path / "var"  # the evaluation's media, indexes and copies
    settings.IMAGINAITION_INDEX_DIR = tmp_path / "indexes"
    return settings.VAR_DIR


def database_exists(name: str) -> bool:
    with connection._nodb_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        return cursor.fetchone() is not None


@pytest.mark.django_db
def test_evaluate_refuses_the_database_in_use_and_databases_it_did_not_create(labelled_set, isolated_var):
    with pytest.raises(CommandError, match="database in use"):
        call_command("evaluate", data=labelled_set, database=connection.settings_dict["NAME"])
    with pytest.raises(CommandError, match="database in use"):
        call_command("evaluate", data=labelled_set, database="postgres")
    other = f"{connection.settings_dict['NAME']}_not_evaluation"
    with connection._nodb_cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{other}"')
        cursor.execute(f'CREATE DATABASE "{other}"')
    try:
        with pytest.raises(CommandError, match="not created by `evaluate`"):
            call_command("evaluate", data=labelled_set, database=other)
        assert database_exists(other)  # refused, not emptied
    finally:
        with connection._nodb_cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{other}"')
    with pytest.raises(CommandError, match="two category sub-folders"):
        call_command("evaluate", data=labelled_set / "red_circles", database=f"{connection.settings_dict['NAME']}_ev")
    with pytest.raises(CommandError, match="lower-case"):
        call_command("evaluate", data=labelled_set, database="Bad-Name")
    for option, value in (("--batch-size", "-3"), ("--batch-size", "0"), ("--scenes", "0"),
                          ("--near-duplicates", "-1")):  # a traceback in the child process, or taken silently
        with pytest.raises(CommandError, match=f"argument {option}: .*must be"):
            call_command("evaluate", "--data", str(labelled_set), option, value)
    with pytest.raises(CommandError, match="argument --batch-size: must be a whole number, 1 or more, not abc"):
        call_command("evaluate", "--data", str(labelled_set), "--batch-size", "abc")  # "invalid integer of ... value"
    with pytest.raises(CommandError, match="argument --seed: must be a whole number, 0 or more, not abc"):
        call_command("evaluate", "--data", str(labelled_set), "--seed", "abc")  # "invalid int value: 'abc'"
    with pytest.raises(CommandError, match="argument --scenes: must be 2 or more, not 1"):
        call_command("evaluate", "--data", str(labelled_set), "--regions", "--scenes", "1")
    # options of --regions without it were ignored: a whole category evaluation ran instead
    with pytest.raises(CommandError, match="--scenes is an option of --regions"):
        call_command("evaluate", "--data", str(labelled_set), "--scenes", "5")
    with pytest.raises(CommandError, match="--backgrounds is an option of --regions"):
        call_command("evaluate", "--data", str(labelled_set), "--backgrounds", str(labelled_set))


@pytest.mark.django_db
def test_evaluate_refuses_a_json_path_or_backgrounds_it_cannot_use_before_it_runs(labelled_set, tmp_path, monkeypatch):
    """A --json file in a missing folder ended a whole evaluation (hours on a real set) in a traceback, the
    report lost; --backgrounds that is no folder was told it was not given."""
    from retrieval.management.commands import evaluate

    def never(**kwargs):
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr(evaluate, "evaluation_in_separate_database", never)
    missing = tmp_path / "missing" / "report.json"
    with pytest.raises(CommandError, match=f"--json {missing}: {missing.parent} is no such folder"):
        call_command("evaluate", "--data", str(labelled_set), "--json", str(missing))
    with pytest.raises(CommandError, match=f"--json {tmp_path} is a folder: name the file to write"):
        call_command("evaluate", "--data", str(labelled_set), "--json", str(tmp_path))
    with pytest.raises(CommandError, match=f"--backgrounds {tmp_path / 'nowhere'}: no such folder"):
        call_command("evaluate", "--regions", "--data", str(labelled_set), "--backgrounds", str(tmp_path / "nowhere"))


SCORE_NAMES = ("precision_at_10", "map_at_50", "near_duplicate_recall_at_1", "near_duplicate_recall_at_10",
               "near_duplicate_recall_at_1_with_copies", "near_duplicate_recall_at_10_with_copies")


@pytest.mark.django_db
def test_evaluate_end_to_end_on_a_tiny_labelled_set(labelled_set, isolated_var, tmp_path):
    database = f"{connection.settings_dict['NAME']}_evaluation"
    images_before, embeddings_before = Image.objects.count(), Embedding.objects.count()
    out = io.StringIO()
    (labelled_set / "empty_category").mkdir()  # no image: it was counted as a category

    call_command("evaluate", data=labelled_set, captions=labelled_set / "captions.tsv", near_duplicates=3,
                 seed=1, database=database, json=tmp_path / "report.json", stdout=out)

    report = json.loads((tmp_path / "report.json").read_text())
    scores = {s["policy"]: s for s in report["scores"]}
    assert list(scores) == ["semantic only", "content only", "hybrid"]
    assert report["profile"] == "offline"
    assert (report["categories"], report["images"], report["category_queries"]) == (3, 12, 12)
    # 12 originals + 3 copies: each copy searches the 11 other originals, then also the 2 other copies.
    assert (report["near_duplicate_queries"], report["distractors"], report["distractors_with_copies"],
            report["caption_queries"]) == (3, 11, 13, 2)
    assert report["skipped"] == []
    for s in scores.values():
        for name in SCORE_NAMES:
            assert 0.0 <= s[name] <= 1.0, (s["policy"], name)
        # Only 3 other images share a query's category: P@10 is at most 3/10.
        assert s["precision_at_10"] <= 0.3 + 1e-9
    # The semantic model tells the three categories apart: for every query the 3 images of its
    # category come first, so P@10 = 3/10 and AP@50 = (1/1 + 2/2 + 3/3) / 3 = 1, by hand.
    assert scores["semantic only"]["precision_at_10"] == pytest.approx(0.3)
    assert scores["semantic only"]["map_at_50"] == pytest.approx(1.0)
    # With 12 (then 15) images and k = 50, both indexes return every other image, so all are "both"
    # and the policy orders them by the preferred (semantic) similarity: hybrid = semantic only.
    for name in SCORE_NAMES:
        assert scores["hybrid"][name] == pytest.approx(scores["semantic only"][name]), name
    # The content model finds each copy's original first (crop, rotation, jitter and JPEG kept the look)...
    assert scores["content only"]["near_duplicate_recall_at_1"] == 1.0
    assert scores["content only"]["near_duplicate_recall_at_1_with_copies"] == 1.0
    # ...and semantic search keeps it within the first 10: it ranks the copy's own category first, and
    # that holds only the 4 originals and at most 2 other copies.
    assert scores["semantic only"]["near_duplicate_recall_at_10"] == 1.0
    assert 0.0 <= report["text_recall_at_1"] <= report["text_recall_at_10"] <= 1.0

    text = out.getvalue()
    assert "| semantic only | 0.300 | 1.000 |" in text and "| R@1, other copies in too |" in text
    assert "3 near-duplicate queries among 11 distractors (13 with the other copies)" in text
    assert "Text→image (captions, 2 queries)" in text
    assert report["precision_at_10_ceiling"] == pytest.approx(0.3)  # said, as 0.3 looks like a poor score
    assert "the best P@10 this data allows is 0.300" in text
    assert "not used (not in a category sub-folder): README.txt" in text  # said, not silently left out
    # The database in use gained nothing; the evaluation database and its files are gone (no --keep).
    assert (Image.objects.count(), Embedding.objects.count()) == (images_before, embeddings_before)
    assert not database_exists(database)
    assert not (isolated_var / "evaluation" / database).exists()


def test_evaluate_regions_end_to_end_on_tiny_composite_scenes(isolated_var, tmp_path, db):
    """Objects with alpha pasted onto photos: the report counts what was pasted, found and queried."""
    from skimage import data as skdata

    objects = tmp_path / "objects"
    for kind, colour in (("discs", (220, 20, 30, 255)), ("squares", (20, 40, 210, 255))):
        (objects / kind).mkdir(parents=True)
        for variant in range(2):
            art = PILImage.new("RGBA", (120, 120), (0, 0, 0, 0))
            draw = ImageDraw.Draw(art)
            box = (10 + 5 * variant, 10, 110, 110 - 5 * variant)
            draw.ellipse(box, fill=colour) if kind == "discs" else draw.rectangle(box, fill=colour)
            art.save(objects / kind / f"{kind}-{variant}.png")
    backgrounds = tmp_path / "photos"
    backgrounds.mkdir()
    for name in ("coffee", "rocket"):
        PILImage.fromarray(getattr(skdata, name)()).save(backgrounds / f"{name}.png")
    database = f"{connection.settings_dict['NAME']}_regions"

    call_command("evaluate", regions=True, data=objects, backgrounds=backgrounds, scenes=4, seed=0,
                 database=database, json=tmp_path / "regions.json", stdout=io.StringIO())

    report = json.loads((tmp_path / "regions.json").read_text())
    assert report["scenes"] == 4 and 4 <= report["objects"] <= 8  # 1-2 objects per scene
    assert 0 <= report["objects_found"] <= report["objects"]
    assert 0.0 <= report["mean_iou"] <= 1.0
    assert 0.0 <= report["whole_precision_at_10_all"] <= 1.0
    assert report["region_style"] == "masked" and report["segmenter"] == "offline/effnet-lite2-cam"
    assert not database_exists(database)
    with pytest.raises(CommandError, match="--backgrounds"):
        call_command("evaluate", regions=True, data=objects, database=database)
