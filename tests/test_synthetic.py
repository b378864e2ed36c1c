"""The generated FathomNet-like benchmark: determinism, COCO validity, the test shift, preview, CLI."""
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import pandas as pd
import pytest

from src.synthetic.generator import (
    PRESETS,
    frame_individuals,
    generate_benchmark,
    generator_record,
    main,
    split_style,
    write_preview,
)
from src.synthetic.shapes import (
    COLOUR_ARCHETYPES,
    Appearance,
    colour_archetype,
    concept_genes,
    draw_sprite,
    instance_genes,
    sample_instance,
)
from src.taxonomy import distance_matrix, load_taxonomy

TAX = load_taxonomy()
D = distance_matrix(TAX)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return generate_benchmark(tmp_path_factory.mktemp("a") / "bench", "tiny", seed=0, workers=1, progress=False)


@pytest.fixture(scope="module")
def tiny_no_shift(tmp_path_factory) -> Path:
    """Generated through the CLI, with shift 0 and a preview."""
    root = tmp_path_factory.mktemp("noshift") / "bench"
    assert main(["--out", str(root), "--preset", "tiny", "--seed", "3", "--shift", "0",
                 "--preview", str(root.parent / "preview.png"), "--context-preview", str(root.parent / "ctx.png"),
                 "--no-progress"]) == 0
    return root


def _coco(root: Path, split: str) -> dict:
    return json.loads((root / f"dataset_{split}.json").read_text())


def _frame(root: Path, image: dict) -> np.ndarray:
    return cv2.imread(unquote(urlparse(image["coco_url"]).path), cv2.IMREAD_UNCHANGED)



def test_same_seed_same_bytes_and_pixels(tiny, tmp_path):
    again = generate_benchmark(tmp_path / "bench", "tiny", seed=0, workers=2, progress=False)
    for name in ("dataset_train.json", "dataset_test.json"):
        a = (tiny / name).read_text().replace(tiny.resolve().as_uri(), "ROOT")
        b = (again / name).read_text().replace(again.resolve().as_uri(), "ROOT")
        assert a == b
    assert (tiny / "solution.csv").read_bytes() == (again / "solution.csv").read_bytes()
    for split in ("train", "test"):
        images_a, images_b = _coco(tiny, split)["images"], _coco(again, split)["images"]
        for ia, ib in zip(images_a, images_b):
            assert np.array_equal(_frame(tiny, ia), _frame(again, ib))


def test_different_seeds_differ(tiny, tmp_path):
    other = generate_benchmark(tmp_path / "bench", "tiny", seed=1, workers=1, progress=False)
    a, b = _coco(tiny, "train"), _coco(other, "train")
    assert [x["bbox"] for x in a["annotations"]] != [x["bbox"] for x in b["annotations"]]
    assert (tiny / "solution.csv").read_bytes() != (other / "solution.csv").read_bytes()
    assert not np.array_equal(_frame(tiny, a["images"][0]), _frame(other, b["images"][0]))


def test_coco_structure_like_the_real_files(tiny, shared_data):
    real = json.loads((shared_data / "dataset_test.json").read_text())
    ours = _coco(tiny, "test")
    assert set(ours) == set(real)
    for key in ("images", "annotations", "categories", "licenses"):
        assert set(ours[key][0]) == set(real[key][0]), key
    assert set(ours["info"]) == set(real["info"])
    assert ours["categories"] == real["categories"]


@pytest.mark.parametrize("split", ["train", "test"])
def test_coco_validity(tiny, split):
    coco = _coco(tiny, split)
    images = {im["id"]: im for im in coco["images"]}
    assert sorted(images) == list(range(1, len(images) + 1))
    anns = coco["annotations"]
    assert [a["id"] for a in anns] == list(range(1, len(anns) + 1))
    target = getattr(PRESETS["tiny"], f"{split}_rois")
    assert target <= len(anns) <= 1.2 * target
    assert [c["id"] for c in coco["categories"]] == list(range(1, 80))
    assert [c["name"] for c in coco["categories"]] == list(TAX.names)
    objects_per_frame = pd.Series([a["image_id"] for a in anns]).value_counts()
    assert len(objects_per_frame) == len(images)  # no empty frame
    for a in anns:
        im = images[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert all(isinstance(v, float) for v in a["bbox"])
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= im["width"] + 1e-6 and y + h <= im["height"] + 1e-6
        assert a["area"] == pytest.approx(w * h, abs=0.01) and a["iscrowd"] == 0 and a["segmentation"] == []
    if split == "train":
        counts = pd.Series([a["category_id"] for a in anns]).value_counts()
        assert len(counts) >= 70  # class-balanced sampling of whole real frames
    else:
        assert all(a["category_id"] is None for a in anns)
    for im in list(images.values())[:5]:
        assert im["coco_url"].startswith("file://") and im["coco_url"].endswith(im["file_name"])
        frame = _frame(tiny, im)
        assert frame.shape == (im["height"], im["width"], 3) and frame.dtype == np.uint8


def test_test_split_replays_the_real_geometry(tiny):
    from src.synthetic.skeleton import load_skeleton
    real = load_skeleton().test_geometry
    record = json.loads((tiny / "generator.json").read_text())
    scale = record["render_scale"]
    coco = _coco(tiny, "test")
    # Each box is the tight box of an animal drawn at a real box: same centre, about the same long side.
    real_boxes = real[["x", "y", "w", "h"]].to_numpy() * scale
    real_centres = real_boxes[:, :2] + real_boxes[:, 2:] / 2
    images = {im["id"]: im for im in coco["images"]}
    ratios = []
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        im = images[a["image_id"]]
        if x <= 0 or y <= 0 or x + w >= im["width"] or y + h >= im["height"]:
            continue  # clipped at the frame border
        gap = np.abs(real_centres - [x + w / 2, y + h / 2]).max(axis=1)
        k = int(np.argmin(gap))
        assert gap[k] <= 1.0
        ratios.append(max(w, h) / real_boxes[k, 2:].max())
    assert len(ratios) > 40 and 0.9 <= np.median(ratios) <= 1.1 and np.percentile(ratios, 90) < 1.3, ratios
    sizes = {(round(w * scale), round(h * scale)) for w, h in real[["width", "height"]].to_numpy()}
    assert all((im["width"], im["height"]) in sizes for im in coco["images"])
    assert record == generator_record("tiny", 0)


def test_solution_covers_test_annotations(tiny):
    solution = pd.read_csv(tiny / "solution.csv")
    assert list(solution.columns) == ["annotation_id", "concept_name"]
    ids = [a["id"] for a in _coco(tiny, "test")["annotations"]]
    assert sorted(solution["annotation_id"]) == sorted(ids)
    assert (TAX.indices(solution["concept_name"]) >= 0).all()
    assert solution["concept_name"].value_counts().max() <= 12
    assert json.loads((tiny / "generator.json").read_text())["classes"] == list(TAX.names)


def _rel_side(root: Path, split: str) -> float:
    coco = _coco(root, split)
    images = {im["id"]: im for im in coco["images"]}
    return float(np.median([max(a["bbox"][2:]) / max(images[a["image_id"]]["width"], images[a["image_id"]]["height"])
                            for a in coco["annotations"]]))


def test_shift_makes_train_objects_larger_and_test_frames_worse(tiny, tiny_no_shift):
    # Default shift 1: train objects 1.6x the (real) test sizes; shift 0: about the same.
    assert _rel_side(tiny, "train") / _rel_side(tiny, "test") == pytest.approx(1.6, rel=0.3)
    assert _rel_side(tiny_no_shift, "train") / _rel_side(tiny_no_shift, "test") == pytest.approx(1.0, rel=0.3)
    styles = [split_style("test", s) for s in (0.0, 0.5, 1.0)]
    assert styles[0] == split_style("train", 0.7)  # no shift: test conditions equal train ones
    assert styles[2].blur[1] > styles[0].blur[1] and styles[2].turbidity[1] > styles[0].turbidity[1]
    assert styles[2].p_lookalike > styles[0].p_lookalike


def test_preview_written(tiny, tiny_no_shift, tmp_path):
    preview = tiny_no_shift.parent / "preview.png"  # written by the CLI
    image = cv2.imread(str(preview))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 400
    assert preview.stat().st_size < 400_000
    # Crops were pasted: the sheet is not just white background and text.
    assert (image.std(axis=2) > 10).mean() > 0.2
    small = cv2.imread(str(write_preview(tiny, tmp_path / "p.png", per_row=2)))
    assert small.shape[0] == image.shape[0] and small.shape[1] < image.shape[1]


def test_refuses_foreign_folder_and_bad_arguments(tmp_path):
    (tmp_path / "dataset_train.json").write_text("{}")
    with pytest.raises(FileExistsError):
        generate_benchmark(tmp_path, "tiny", progress=False)
    with pytest.raises(ValueError, match="preset"):
        generate_benchmark(tmp_path / "x", "huge", progress=False)
    with pytest.raises(ValueError, match="shift"):
        generate_benchmark(tmp_path / "x", "tiny", shift=1.5, progress=False)
    assert not (tmp_path / "x").exists()


def test_shape_follows_the_taxonomy_and_colour_crosses_phyla():
    genes = concept_genes(TAX)
    assert len({(g.plan, g.shape, g.body_hsv, g.texture, g.count_delta) for g in genes}) == 79
    shape = np.array([g.shape for g in genes])
    family = np.array([lin[4] or f"?{i}" for i, lin in enumerate(TAX.lineages)])
    phylum = np.array([lin[1] for lin in TAX.lineages])
    close = (family[:, None] == family[None]) & ~np.eye(79, dtype=bool)  # same family, both named
    far = phylum[:, None] != phylum[None]
    shape_dist = np.linalg.norm(shape[:, None] - shape[None], axis=-1)
    assert shape_dist[close].mean() < 0.5 * shape_dist[far].mean()
    # Deep-sea colours are shared across phyla: most colour archetypes are worn by several phyla.
    hsv = np.array([g.body_hsv for g in genes])
    archetype = np.array([np.argmin([abs((h - a[0] + 90) % 180 - 90) / 15 + abs(sv[0] - a[1]) / 60 + abs(sv[1] - a[2]) / 60
                                     for a in COLOUR_ARCHETYPES]) for h, *sv in hsv])
    phyla_per_colour = [len(set(phylum[archetype == k])) for k in np.unique(archetype)]
    assert np.mean(np.array(phyla_per_colour) >= 2) >= 0.6
    plans = [g.plan for g in genes]
    assert plans[TAX.index("Sebastes")] == plans[TAX.index("Merluccius productus")] == "fish"
    assert plans[TAX.index("Asteroidea")] == "star"


def test_phylum_palettes_keep_colour_confusions_inside_the_phylum():
    phyla = sorted({f"Animalia/{lin[1]}" for lin in TAX.lineages})
    keys = [f"{p}/taxon{k}" for p in phyla for k in range(40)]
    # All taxa on the palette: each phylum wears palette_size colours at most, and phyla differ.
    all_in = Appearance(p_phylum_palette=1.0, palette_size=3)
    worn = {p: {colour_archetype(k, p, all_in) for k in keys if k.startswith(p + "/")} for p in phyla}
    assert all(len(w) == 3 for w in worn.values()) and len({tuple(sorted(w)) for w in worn.values()}) > 1
    # None on it: every phylum wears almost every colour; the default lies in between.
    none_in = Appearance(p_phylum_palette=0.0)
    assert min(len({colour_archetype(k, p, none_in) for k in keys if k.startswith(p + "/")}) for p in phyla) >= 6
    default = Appearance()
    off_palette = np.mean([colour_archetype(k, k.rsplit("/", 1)[0], default) not in worn[k.rsplit("/", 1)[0]]
                           for k in keys])
    assert 0.15 < off_palette < 0.6  # (1 - 0.6) of the taxa choose among all 8 colours, 5/8 of those off it


def test_siblings_of_one_taxon_in_a_frame_share_their_look():
    genes = concept_genes(TAX)
    i, j = TAX.index("Sebastolobus"), TAX.index("Octopus rubescens")
    rng = np.random.default_rng(0)
    same_plan, value_gap_siblings, value_gap_frames = [], [], []
    for _ in range(300):
        a, b, c = frame_individuals(np.array([i, i, j]), genes, 0.5, rng)
        same_plan.append(a.plan == b.plan)
        value_gap_siblings.append(abs(a.body_hsv[2] - b.body_hsv[2]))
        d = frame_individuals(np.array([i]), genes, 0.5, rng)[0]
        value_gap_frames.append(abs(a.body_hsv[2] - d.body_hsv[2]))
    assert all(same_plan)  # one look per taxon and frame, look-alikes included
    assert np.mean(value_gap_siblings) < 0.5 * np.mean(value_gap_frames)


def test_atypical_frames_draw_their_animals_further_from_the_taxon():
    genes = concept_genes(TAX)
    i = TAX.index("Sebastolobus")
    typical = genes[i].shape

    def spread(atypical_frames: float) -> float:
        rng = np.random.default_rng(1)
        return np.mean([np.abs(np.subtract(frame_individuals(np.array([i]), genes, 0.0, rng, atypical_frames)[0].shape,
                                           typical)).mean() for _ in range(300)])

    assert spread(1.0) > 1.8 * spread(0.0)
    assert spread(0.0) < spread(0.2) < spread(1.0)


def test_lookalikes_belong_to_other_classes_and_are_drawn_at_their_rate():
    genes = concept_genes(TAX)
    classes = [lin[2] or name for name, lin in zip(TAX.names, TAX.lineages)]
    for i, g in enumerate(genes):
        assert len(g.lookalikes) == 2 and all(classes[j] != classes[i] for j in g.lookalikes)
    phylum = [lin[1] for lin in TAX.lineages]
    assert np.mean([phylum[j] != phylum[i] for i, g in enumerate(genes) for j in g.lookalikes]) > 0.5
    rng = np.random.default_rng(0)
    i = TAX.index("Sebastolobus")
    looks = [instance_genes(genes, i, rng, p_lookalike=0.3).plan for _ in range(400)]
    own = genes[i].plan
    other = np.mean([p != own for p in looks])
    expected = 0.3 * np.mean([genes[j].plan != own for j in genes[i].lookalikes])
    assert abs(other - expected) < 0.07


def test_coarse_concepts_may_look_like_their_finer_relatives():
    genes = concept_genes(TAX)
    relatives = {TAX.names[i]: {TAX.names[j] for j in g.relatives} for i, g in enumerate(genes)}
    assert {"Hexactinellida", "Mycale", "Farrea"} <= relatives["Porifera"]
    assert relatives["Sebastes"] == {"Sebastes diploproa"} and relatives["Sebastes diploproa"] == set()
    assert relatives["Caridea"] == set()  # rank outside the seven: its members are unknown


def test_sprites_of_every_plan_are_drawn():
    rng = np.random.default_rng(0)
    for g in concept_genes(TAX):
        bgr, alpha = draw_sprite(sample_instance(g, rng), 40.0, rng.uniform(0, 360), rng)
        ys, xs = np.nonzero(alpha > 0.2)
        assert bgr.shape[:2] == alpha.shape and len(xs) > 30, g.plan
        extent = max(np.ptp(xs), np.ptp(ys)) + 1
        assert 12 <= extent <= alpha.shape[0], (g.plan, extent)


# ---------------------------------------------------------------- habitat: the context of a frame

def test_every_concept_has_a_valid_habitat_with_a_source():
    from src.synthetic.habitat import BIOTOPE_SUBSTRATE, BIOTOPES, MODES, concept_profiles, load_habitats
    table = load_habitats()
    assert sorted(table["concept"]) == sorted(TAX.names) and len(table) == 79
    assert table["source"].str.len().min() > 10
    assert all(b in BIOTOPES for kinds in table["biotopes"] for b in kinds.split(";"))
    assert set(table["mode"]) <= set(MODES) and (table["depth_min"] < table["depth_max"]).all()
    profiles = concept_profiles(tuple(TAX.names))
    assert profiles.biotope.shape == (79, len(BIOTOPES)) and profiles.zone.shape == (79, 4)
    # Biology: bottom fish live on the bottom, corals on rock, glass sponges on sponge grounds, pyrosomes in
    # open water, vesicomyid clams at seeps.
    row = table.set_index("concept")
    first = {c: b.split(";")[0] for c, b in row["biotopes"].items()}
    assert BIOTOPE_SUBSTRATE[first["Sebastolobus"]] == "soft" and row.loc["Sebastolobus", "mode"] != "pelagic"
    assert BIOTOPE_SUBSTRATE[first["Microstomus pacificus"]] == "soft"
    assert first["Paragorgia arborea"] == "garden" and row.loc["Pyrosoma atlanticum", "biotopes"] == "water"
    assert first["Heterochone calyx"] == "sponge" and first["Vesicomyidae"] == "seep"


def test_a_bad_habitat_row_is_a_one_line_error(tmp_path):
    from src.synthetic.habitat import HABITAT_CSV, load_habitats
    table = pd.read_csv(HABITAT_CSV, dtype=str, keep_default_na=False)
    table.loc[0, "biotopes"] = "mud;lava"
    table.to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(ValueError, match="bad biotopes 'mud;lava'.*valid: water"):
        load_habitats(tmp_path / "h.csv")


def test_a_frame_habitat_follows_all_its_taxa():
    from src.synthetic.habitat import ZONES, choose_habitat, concept_profiles, habitat_probabilities
    profiles = concept_profiles(tuple(TAX.names))
    idx = TAX.index
    # The same frame in any order: the same habitat distribution.
    a = habitat_probabilities([idx("Sebastolobus"), idx("Paragorgia")], profiles)
    assert np.allclose(a, habitat_probabilities([idx("Paragorgia"), idx("Sebastolobus")], profiles))
    rng = np.random.default_rng(0)

    def share(taxa, substrate, n=400):
        return np.mean([choose_habitat(taxa, profiles, rng).substrate == substrate for _ in range(n)])

    def biotope_share(taxa, biotope, n=400):
        return np.mean([choose_habitat(taxa, profiles, rng).biotope == biotope for _ in range(n)])

    assert share([idx("Paragorgia arborea")], "hard") > 0.8
    assert share([idx("Scotoplanes")], "soft") > 0.8
    assert share([idx("Pyrosoma atlanticum")], "water") > 0.8
    # A king crab (seep, mud or rock) beside a bubblegum coral is on rock, beside a sea pig on soft bottom,
    # whichever comes first.
    assert share([idx("Lithodidae"), idx("Paragorgia")], "hard") > 0.8
    assert share([idx("Scotoplanes"), idx("Lithodidae")], "soft") > 0.8
    assert biotope_share([idx("Keratoisis")], "garden") > 0.8 and biotope_share([idx("Elpidia")], "ooze") > 0.8
    deep = [choose_habitat([idx("Elpidia")], profiles, rng) for _ in range(200)]
    assert np.mean([h.zone == len(ZONES) - 1 for h in deep]) > 0.8 and np.median([h.depth_m for h in deep]) >= 2000
    # Context hints at the phylum, not the concept: many concepts share their most likely habitat.
    best = np.array([habitat_probabilities([i], profiles).argmax() for i in range(79)])
    sharing = np.array([(best == b).sum() for b in best])  # concepts whose most likely habitat is this one's
    assert np.median(sharing) >= 3


def test_benthic_test_animals_rest_on_the_seafloor(tiny):
    from src.synthetic.habitat import BIOTOPE_SUBSTRATE, concept_profiles
    scenes = pd.read_csv(tiny / "frame_habitats.csv")
    assert set(scenes["split"]) == {"train", "test"} and set(scenes["substrate"]) <= {"soft", "hard", "biogenic", "water"}
    assert all(BIOTOPE_SUBSTRATE[b] == s for b, s in zip(scenes["biotope"], scenes["substrate"]))
    profiles = concept_profiles(tuple(TAX.names))
    truth = pd.read_csv(tiny / "solution.csv").set_index("annotation_id")["concept_name"]
    key = scenes[scenes["split"] == "test"].set_index("image_id")
    above = below = 0
    for ann in _coco(tiny, "test")["annotations"]:
        scene = key.loc[ann["image_id"]]
        mode = profiles.mode[TAX.index(truth[ann["id"]])]
        if scene["substrate"] != "water" and mode in (0, 1):  # sessile, crawling
            x, y, w, h = ann["bbox"]
            below += y + h / 2 >= scene["horizon"]
            above += y + h / 2 < scene["horizon"]
    assert below > 0 and above == 0


def test_an_individual_is_degraded_around_its_frame():
    from src.synthetic.generator import degrade_individual
    rgb, alpha = draw_sprite(concept_genes(TAX)[0], 30.0, 0.0, np.random.default_rng(0))
    water = np.array([100.0, 50.0, 10.0])
    same, a, pad = degrade_individual(rgb, alpha, 0.0, 0.0, water)
    assert pad == 0 and np.array_equal(same, rgb)
    blurred, b, pad = degrade_individual(rgb, alpha, 2.0, 0.5, water)
    assert pad > 0 and b.shape[0] == alpha.shape[0] + 2 * pad and (b > 0.05).sum() > (alpha > 0.05).sum()
    inside = alpha > 0.9
    hazed = blurred[pad:-pad, pad:-pad][inside].mean(0)
    assert np.abs(hazed - water).sum() < np.abs(rgb[inside].mean(0) - water).sum()


def test_context_preview(tiny, tiny_no_shift, tmp_path):
    from src.synthetic.generator import write_context_preview
    assert (tiny_no_shift.parent / "ctx.png").stat().st_size > 10_000  # written by the CLI
    png = write_context_preview(tiny, tmp_path / "ctx.png", per_side=2, thumb=120)
    image = cv2.imread(str(png))
    assert image is not None and image.shape[1] > 400 and png.stat().st_size < 500_000


def test_habitat_bayes_accuracy_matches_a_direct_count():
    from src.synthetic.habitat import Profiles, habitat_bayes_accuracy
    # Two habitats (1 biotope x 2 zones), three classes of two groups; class 0 lives in zone 0, classes 1-2 in zone 1.
    zone = np.array([[1.0, 1e-6], [1e-6, 1.0], [1e-6, 1.0]])
    biotope = np.ones((3, 1))
    profiles = Profiles(biotope, zone, np.zeros((3, 2)), np.zeros(3, np.int64), np.ones((3, 1, 2)) / 2)
    frames = [np.array([0]), np.array([1]), np.array([2]), np.array([2])]
    # Zone 0 answers group 0 (class 0: right), zone 1 answers group 1 (classes 1 (group 0: wrong), 2, 2: right).
    assert habitat_bayes_accuracy(frames, np.array([0, 0, 1]), profiles) == pytest.approx(3 / 4, abs=1e-5)
    assert habitat_bayes_accuracy(frames, np.array([0, 1, 2]), profiles) == pytest.approx(3 / 4, abs=1e-5)


def test_the_habitat_tells_the_phylum_coarsely_and_the_concept_hardly():
    """On the real train frames' label multisets: the habitat alone tells the phylum at least 10 points
    better than always answering the most common one, and the concept far worse than a model of the ROI."""
    from src.synthetic.habitat import concept_profiles, habitat_bayes_accuracy
    from src.synthetic.skeleton import load_skeleton
    frames = load_skeleton().train_multisets()
    profiles = concept_profiles(tuple(TAX.names))
    phylum = np.array([lineage[1] for lineage in TAX.lineages])
    _, counts = np.unique(phylum[np.concatenate(frames)], return_counts=True)
    majority = counts.max() / counts.sum()
    assert habitat_bayes_accuracy(frames, phylum, profiles) >= majority + 0.10
    assert habitat_bayes_accuracy(frames, np.arange(79), profiles) < 0.25


def test_each_biotope_is_told_from_a_thumbnail():
    """The bottoms differ as real ones do at a glance: a linear classifier of the bare background's colour
    histogram and 8 x 8 thumbnail (no animals), fitted on half the renders, names the biotope of the other
    half (generator v6's looks: 0.56; v7's: 0.89)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bench.realism import _view_features
    from src.synthetic.habitat import BIOTOPES, ZONES, Habitat, render_background
    rng = np.random.default_rng(0)
    x, y = [], []
    for label, biotope in enumerate(BIOTOPES):
        for _ in range(24):
            zone = int(rng.integers(len(ZONES)))
            habitat = Habitat(biotope, zone, float(rng.uniform(*ZONES[zone][1:])))
            frame = np.clip(render_background(960, 540, habitat, rng)[0], 0, 255).astype(np.uint8)
            x.append(_view_features(frame, np.ones(frame.shape[:2], bool)))  # the context probe's features
            y.append(label)
    x, y = np.array(x), np.array(y)
    fit, held = np.arange(len(y)) % 2 == 0, np.arange(len(y)) % 2 == 1
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[fit], y[fit])
    assert np.mean(model.predict(x[held]) == y[held]) >= 0.8
