"""trainer/serving/retrieval.py: the saved item index and top-k against brute force."""

import os
import shutil
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf

from tests.harness import make_catalogue, make_features, model_inputs, raw_batch, \
    tiny_two_tower
from trainer import kinds
from trainer.kinds.item_index import ItemIndex
from trainer.serving import retrieval
from trainer.errors import RunDirError, UserInputError


def test_top_k_equals_numpy_brute_force_and_excludes_seen_items():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 30))
    positions, top = retrieval.top_k(scores, 5, exclude=[[], [0, 1], [], list(range(25))])
    for row in range(4):
        allowed = [j for j in np.argsort(-scores[row], kind="stable")
                   if not (row == 1 and j in (0, 1)) and not (row == 3 and j < 25)]
        assert positions[row].tolist() == allowed[:5]
        np.testing.assert_allclose(top[row], scores[row, allowed[:5]])
    assert np.all(np.diff(top, axis=1) <= 0)


def brute_force_scores(queries, present, vectors):
    """Every slot against every item, absent slots at -inf, the best slot per user."""
    products = np.einsum("bkd,nd->bkn", queries.astype(np.float64), vectors)
    return np.where(present[:, :, None], products, -np.inf).max(axis=1)


@pytest.mark.parametrize("step_scores", [1, retrieval.TILE_SCORES])
def test_catalogue_scores_in_tiles_equal_brute_force(step_scores):
    """retrieval.catalogue_scores a tile of items at a time (tiles of 256 items, the last
    one short, or one tile): the best present slot plus the offset, -inf with none."""
    rng = np.random.default_rng(4)
    queries = rng.normal(size=(4, 3, 5)).astype(np.float32)
    present = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]], bool)
    vectors = rng.normal(size=(700, 5)).astype(np.float32)
    with mock.patch.object(retrieval, "TILE_SCORES", step_scores):
        scores = retrieval.catalogue_scores(queries, present, vectors, 0.25)
    assert scores.dtype == np.float32 and scores.shape == (4, 700)
    np.testing.assert_allclose(scores, brute_force_scores(queries, present, vectors) + 0.25,
                               rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(scores[3]))


@pytest.mark.parametrize("items,k", [(300, 5), (300, 60), (300, 298), (300, 300), (5000, 7)])
def test_exported_top_k_equals_numpy_over_the_whole_catalogue(items, k):
    """``retrieve``'s top k (endpoints.catalogue_top_k: the best groups' items of a padded
    catalogue) against numpy over every item: ties across group edges, absent query slots,
    seen items (filling k only past the unseen ones), the one-product and per-slot paths."""
    from trainer.kinds import endpoints

    rng = np.random.default_rng(3)
    users, slots, dim = 5, 4, 6
    queries = rng.normal(size=(users, slots, dim)).astype(np.float32)
    queries[..., -1] = 1  # the constant coordinate, as retrieval_queries gives it
    present = rng.random((users, slots)) < 0.6
    present[:, -1] = ~present[:, :-1].any(axis=1)  # as retrieval_queries: one slot at least
    vectors = np.round(rng.normal(size=(items, dim)), 1).astype(np.float32)
    vectors[120:140] = vectors[100]  # tied logits across a group edge (128)
    seen = np.full((users, 3), -1, np.int32)
    seen[1] = [100, 130, items - 1]
    seen[2, :1] = [7]
    padded = endpoints.padded_retrieval_vectors(vectors)
    assert len(padded) % endpoints.SCORE_GROUP == 0 and len(padded) >= items
    expected_scores = brute_force_scores(queries, present, vectors)
    for one_product in (endpoints.ONE_PRODUCT_SCORES, 0):
        with mock.patch.object(endpoints, "ONE_PRODUCT_SCORES", one_product):
            logits, positions = tf.function(endpoints.catalogue_top_k)(
                tf.constant(queries), tf.constant(present), tf.constant(padded),
                tf.constant(seen), tf.constant(k), items)
        for row in range(users):
            excluded = sorted({int(s) for s in seen[row] if s >= 0})
            allowed = [j for j in np.argsort(-expected_scores[row], kind="stable")
                       if j not in excluded][:k]
            np.testing.assert_allclose(logits[row].numpy()[:len(allowed)],
                                       expected_scores[row, allowed], rtol=1e-5, atol=1e-5)
            assert positions[row].numpy()[:len(allowed)].tolist() == allowed
            # Past the unseen items: seen ones, at -inf.
            assert set(positions[row].numpy()[len(allowed):].tolist()) <= set(excluded)
            assert np.all(np.isneginf(logits[row].numpy()[len(allowed):]))


@pytest.mark.parametrize("k", [0, -1, 31, 2.5])
def test_bad_k_is_refused(k):
    with pytest.raises(UserInputError, match="k"):
        retrieval.top_k(np.zeros((1, 30)), k)


def test_k_beyond_the_unseen_items_is_refused():
    with pytest.raises(UserInputError, match="not seen"):
        retrieval.top_k(np.zeros((1, 3)), 2, exclude=[[0, 1]])


def test_item_index_round_trips_and_scores_like_the_model(tmp_path):
    catalogue = make_catalogue()
    features = make_features(catalogue, sorted(catalogue)[:9])
    model = tiny_two_tower(features)
    x = model_inputs(features, raw_batch(catalogue))
    index = kinds.kind_class("two_tower")().item_index(model, features, batch_size=5)
    assert len(index) == len(catalogue) and index.item_ids == sorted(catalogue)
    index.save(str(tmp_path))
    loaded = ItemIndex.load(str(tmp_path))
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    assert loaded.item_ids == index.item_ids and (loaded.id_index == index.id_index).all()
    # score_matrix over the cached vectors equals the model scoring each pair.
    state = model.user_state(x)
    matrix = np.asarray(model.score_matrix(state, loaded.vectors, loaded.id_index))
    for row in range(3):  # the last raw row's candidate is not in the catalogue
        column = index.item_ids.index(raw_batch(catalogue)["item_id"].numpy()[row].decode())
        np.testing.assert_allclose(matrix[row, column], model(x).numpy()[row], atol=1e-5)


def test_missing_item_index_names_the_directory(tmp_path):
    with pytest.raises(RunDirError, match="item_index"):
        ItemIndex.load(str(tmp_path))


# ----------------------------------------------------------------------------- a trained run

def test_training_saves_an_item_index_that_matches_the_model(trained_two_tower_run):
    from trainer.serving import recommend_lib

    model_dir, _ = trained_two_tower_run
    index = ItemIndex.load(model_dir)
    recommender = recommend_lib.Recommender(model_dir)
    assert len(index) == len(recommender.featurizer.item_ids) - 1
    rebuilt = kinds.kind_class(recommender.cfg.model.kind)().item_index(
        recommender.model, recommender.featurizer, 512)
    np.testing.assert_allclose(rebuilt.vectors, index.vectors, atol=1e-5)


def test_the_projector_shows_the_item_index_vectors(trained_two_tower_run):
    """The run's item vectors are computed once; the projector reuses them."""
    import os

    from trainer.evaluation import run_reports

    model_dir, _ = trained_two_tower_run
    index = ItemIndex.load(model_dir)
    log_dir = os.path.join(model_dir, "tensorboard", "projector")
    with open(os.path.join(log_dir, "metadata.tsv")) as f:
        shown = [line.split("\t")[0] for line in f.read().splitlines()[1:]]
    vectors = tf.train.load_checkpoint(tf.train.latest_checkpoint(log_dir)).get_tensor(
        run_reports.PROJECTOR_TENSOR)
    position = {item: i for i, item in enumerate(index.item_ids)}
    np.testing.assert_array_equal(vectors, index.vectors[[position[i] for i in shown]])


def test_recommend_ranks_the_catalogue_like_pairwise_scoring(trained_two_tower_run):
    from trainer.serving import recommend_lib

    model_dir, _ = trained_two_tower_run
    recommender = recommend_lib.Recommender(model_dir)
    history = recommender.index.item_ids[:3]
    top = recommender.recommend(["a query", ""], [history, []], k=5)
    assert [len(row) for row in top] == [5, 5]
    assert not {r["item_id"] for r in top[0]} & set(history)  # seen items are excluded
    logits = [r["logit"] for r in top[0]]
    assert logits == sorted(logits, reverse=True)
    # The same user scored pair by pair through the model: the best unseen item agrees.
    featurizer, model = recommender.featurizer, recommender.model
    items = [i for i in recommender.index.item_ids if i not in history]
    texts = [featurizer.item_texts[featurizer.item_ids.index(i)] for i in items]
    n = len(items)
    history_texts = [featurizer.item_texts[featurizer.item_ids.index(i)] for i in history]
    x = featurizer.from_text(tf.constant(["a query"] * n), tf.constant([history_texts] * n),
                             tf.constant(texts), history_ids=tf.constant([history] * n),
                             item_ids=tf.constant(items))
    pairwise = model(x).numpy()
    assert items[int(np.argmax(pairwise))] == top[0][0]["item_id"]
    np.testing.assert_allclose(np.sort(pairwise)[::-1][:5], logits, atol=1e-4)
    # k changes per call; a second k in the same process
    assert len(recommender.recommend([""], [history], k=2)[0]) == 2


def test_recommend_refuses_unknown_history_items_and_bad_k(trained_two_tower_run):
    from trainer.serving import recommend_lib

    recommender = recommend_lib.Recommender(trained_two_tower_run[0])
    with pytest.raises(UserInputError, match="no-such-item"):
        recommender.recommend([""], [["no-such-item"]], k=3)
    with pytest.raises(UserInputError, match="k"):
        recommender.recommend([""], [[]], k=0)


def test_recommend_needs_a_two_tower_run(trained_run):
    from trainer.serving import recommend_lib

    _, model_dir, _ = trained_run
    with pytest.raises((UserInputError, RunDirError)):
        recommend_lib.Recommender(model_dir)


def test_recommend_command_prints_k_ranked_items(trained_two_tower_run, capsys):
    from trainer import task

    model_dir, _ = trained_two_tower_run
    history = ItemIndex.load(model_dir).item_ids[:2]
    assert task.main(["recommend", "--model_dir", model_dir, "--history", ",".join(history),
                      "--k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[1:]  # after the header
    assert [line.split("\t")[0] for line in lines] == ["1", "2", "3", "4"]
    assert not {line.split("\t")[1] for line in lines} & set(history)
    assert task.main(["recommend", "--model_dir", model_dir, "--history", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_exported_retrieve_matches_recommend_for_two_k_in_one_process(trained_two_tower_run):
    """The SavedModel's ``retrieve``: item vectors baked in, k a runtime input, seen items
    excluded, and the same ranking as ``recommend`` (numpy over the saved index)."""
    from trainer.serving import export, recommend_lib

    model_dir, _ = trained_two_tower_run
    recommender = recommend_lib.Recommender(model_dir)
    retrieve = export.load_serving_fn(f"{model_dir}/export", "retrieve")
    history = recommender.index.item_ids[:3]
    texts = [recommender.featurizer.item_texts[recommender.featurizer.item_ids.index(i)]
             for i in history]
    for k in (3, 7):
        out = retrieve(query=tf.constant(["a query", ""]),
                       history_text=tf.constant([texts, ["", "", ""]]),
                       history_ids=tf.constant([history, ["", "", ""]]),
                       k=tf.constant(k, tf.int32))
        expected = recommender.recommend(["a query", ""], [history, []], k=k)
        assert out["item_ids"].shape == (2, k)
        for row in range(2):
            got = [i.decode() for i in out["item_ids"].numpy()[row]]
            assert got == [r["item_id"] for r in expected[row]]
            np.testing.assert_allclose(out["logits"].numpy()[row],
                                       [r["logit"] for r in expected[row]], atol=1e-4)
        assert not set(out["item_ids"].numpy()[0].astype(str)) & set(history)
    size = len(recommender.index)
    for bad in (0, size + 1):
        with pytest.raises(tf.errors.InvalidArgumentError, match="k must be"):
            retrieve(query=tf.constant([""]), history_text=tf.constant([[""]]),
                     history_ids=tf.constant([[""]]), k=tf.constant(bad, tf.int32))


def test_top_k_over_a_large_catalogue_equals_a_full_stable_sort():
    # 4 * k < N takes the partition path; rounded scores make ties at the k-th place.
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=(6, 500)), 1).astype(np.float32)
    exclude = [[], [3, 4], [], list(range(100)), [], []]
    positions, top = retrieval.top_k(scores, 20, exclude=exclude)
    for row in range(6):
        allowed = [j for j in np.argsort(-scores[row], kind="stable") if j not in exclude[row]]
        assert positions[row].tolist() == allowed[:20]
        np.testing.assert_array_equal(top[row], scores[row, allowed[:20]])


@pytest.mark.parametrize("similarity,max_interest", [("dot", True), ("cosine", True),
                                                     ("dot", False)])
def test_retrieval_vectors_and_queries_give_the_model_logits(similarity, max_interest):
    catalogue = make_catalogue()
    features = make_features(catalogue, sorted(catalogue)[:9])
    model = tiny_two_tower(features)
    model.similarity, model.max_interest = similarity, max_interest
    x = model_inputs(features, raw_batch(catalogue))
    model(x)  # builds the weights
    model.item_bias.embeddings.assign(np.linspace(-1, 1, model.item_bias.embeddings.shape[0])
                                      [:, None].astype(np.float32))
    model.global_bias.assign(0.25)
    index = kinds.kind_class("two_tower")().item_index(model, features, batch_size=5)
    state = dict(model.user_state(x))
    # A user with no part present (its logit adds no best match).
    state["interest_mask"] = tf.concat([tf.zeros_like(state["interest_mask"][:1]),
                                        state["interest_mask"][1:]], axis=0)
    expected = np.asarray(model.score_matrix(state, index.vectors, index.id_index))
    queries, present = (np.asarray(t) for t in model.retrieval_queries(state))
    vectors = np.asarray(model.retrieval_vectors(index.vectors, index.id_index))
    assert vectors.shape == (len(index), index.vectors.shape[1] + 1)
    assert present.any(axis=1).all()  # every user, the one with no part too, has a query
    scores = retrieval.catalogue_scores(queries, present, vectors, float(model.global_bias))
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage, search", [
    *[(storage, "per_query") for storage in retrieval.ApproximateIndex.STORAGE],
    ("flat", "joint"), ("sq8", "joint")])
def test_approximate_index_proposes_what_exact_retrieval_finds_and_scores_it_exactly(
        storage, search):
    pytest.importorskip("faiss")
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(3000, 9)).astype(np.float32)
    vectors[:, -1] = rng.normal(scale=0.5, size=3000)  # a bias column
    queries = rng.normal(size=(5, 3, 9)).astype(np.float32)
    queries[..., -1] = 1.0
    present = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 1], [0, 1, 0]], bool)
    exclude = [[], [5, 6, 7], [], [], list(range(50))]
    exact_positions, exact_logits = retrieval.top_k(
        retrieval.catalogue_scores(queries, present, vectors, 0.5), 10, exclude)
    index = retrieval.ApproximateIndex(vectors, candidates=64, ef_search=64,
                                       storage=storage, search=search)
    positions, logits = index.search(queries, present, 10, offset=0.5, exclude=exclude)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(positions, exact_positions)])
    assert recall >= 0.9
    for row in range(5):
        assert not set(positions[row]) & set(exclude[row])
        # Every returned logit is the exact one for its item.
        exact = retrieval.catalogue_scores(queries[row:row + 1], present[row:row + 1],
                                           vectors[positions[row]], 0.5)[0]
        np.testing.assert_allclose(logits[row], exact, rtol=1e-6)
    np.testing.assert_allclose(logits[:, 0], exact_logits[:, 0], rtol=1e-6)


def test_the_joint_search_ranks_its_beam_by_the_users_logit():
    """User 0's second query is a hundredth of its first's length, so nothing it finds can
    reach the first query's top 10; user 1's two queries point at opposite halves of the
    catalogue and share its top 10. One walk per user, with a beam of only 16, returns
    each user's exact top 10 in both cases, items it must not return included on the way."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(2000, 8)).astype(np.float32)
    direction = rng.normal(size=8).astype(np.float32)
    queries = np.stack([np.stack([3 * direction, 0.01 * rng.normal(size=8)]),
                        np.stack([direction, -direction])]).astype(np.float32)
    present = np.ones((2, 2), bool)
    scores = retrieval.catalogue_scores(queries, present, vectors)
    exact, _ = retrieval.top_k(scores, 10)
    index = retrieval.ApproximateIndex(vectors, ef_search=16, search="joint")
    positions, logits = index.search(queries, present, 10)
    np.testing.assert_array_equal(positions, exact)
    np.testing.assert_allclose(logits, np.take_along_axis(scores, exact, axis=1), rtol=1e-6)
    # User 1's 3 best items are excluded: the walk passes through them and returns the
    # next 10, as exact retrieval does.
    exclude = [[], list(exact[1, :3])]
    expected, _ = retrieval.top_k(scores, 10, exclude)
    np.testing.assert_array_equal(index.search(queries, present, 10, exclude=exclude)[0],
                                  expected)
    # The beam holds ef_search items: k above it widens the beam, never returns fewer.
    assert index.search(queries, present, 40)[0].shape == (2, 40)


def test_the_joint_search_is_refused_without_numba(monkeypatch):
    pytest.importorskip("faiss")
    from trainer.serving import graph_search

    monkeypatch.setattr(graph_search, "COMPILED", False)
    with pytest.raises(UserInputError, match="the joint search needs numba"):
        retrieval.ApproximateIndex(np.zeros((10, 4), np.float32))
    index = retrieval.ApproximateIndex(np.eye(10, 4, dtype=np.float32), search="per_query")
    assert index.search_mode == "per_query"


def test_approximate_index_refuses_an_unknown_storage_or_search():
    pytest.importorskip("faiss")
    with pytest.raises(UserInputError, match="storage must be one of flat, fp16, sq8"):
        retrieval.ApproximateIndex(np.zeros((10, 4), np.float32), storage="pq")
    with pytest.raises(UserInputError, match="search must be one of joint, per_query"):
        retrieval.ApproximateIndex(np.zeros((10, 4), np.float32), search="two_pass")


def test_recommend_approximate_serves_the_exact_top_k_of_a_small_catalogue(
        trained_two_tower_run, tmp_path):
    """``Recommender(approximate=True)`` goes through the joint walk over the run's own
    item index: on a catalogue smaller than the beam it reaches every item, so it returns
    exact retrieval's items and logits, seen items excluded."""
    pytest.importorskip("faiss")
    from trainer.serving import recommend_lib

    # A copy: the approximate recommender saves its graph under the run's item_index/.
    model_dir = str(shutil.copytree(trained_two_tower_run[0], tmp_path / "run"))
    exact = recommend_lib.Recommender(model_dir)
    approximate = recommend_lib.Recommender(model_dir, approximate=True)
    assert approximate.approximate_index.search_mode == "joint"
    items = list(exact.index.item_ids)
    assert len(items) < approximate.approximate_index.ef_search
    queries, histories = ["", "a query"], [items[:3], items[5:6]]
    expected_positions, expected_logits = exact.retrieve(queries, histories, 5)
    positions, logits = approximate.retrieve(queries, histories, 5)
    for row, history in enumerate(histories):
        assert set(positions[row]) == set(expected_positions[row])
        assert not {items[p] for p in positions[row]} & set(history)
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5, atol=1e-6)


def small_catalogue_vectors(seed=5, items=400):
    vectors = np.random.default_rng(seed).normal(size=(items, 6)).astype(np.float32)
    vectors[:, -1] = 0.1  # a bias column
    return vectors


def test_approximate_index_saves_its_graph_and_reads_it_back(tmp_path):
    """cache_dir: the first index builds and saves the graph, the next one of the same
    vectors and settings reads it (and searches alike); other vectors or settings build a
    graph of their own."""
    pytest.importorskip("faiss")
    vectors = small_catalogue_vectors()
    queries = np.random.default_rng(6).normal(size=(3, 2, 6)).astype(np.float32)
    queries[..., -1] = 1.0
    present = np.ones((3, 2), bool)
    built = retrieval.ApproximateIndex(vectors, neighbours=8, ef_search=32,
                                       cache_dir=str(tmp_path))
    assert not built.loaded
    assert os.path.basename(built.graph_file).startswith("hnsw-M8-efc200-flat-")
    assert os.listdir(tmp_path) == [os.path.basename(built.graph_file)]  # nothing partial
    read = retrieval.ApproximateIndex(vectors, neighbours=8, ef_search=32,
                                      cache_dir=str(tmp_path))
    assert read.loaded and read.graph_file == built.graph_file
    for got, expected in zip(read.search(queries, present, 5),
                             built.search(queries, present, 5)):
        np.testing.assert_array_equal(got, expected)
    other_vectors = retrieval.ApproximateIndex(small_catalogue_vectors(seed=7), neighbours=8,
                                               cache_dir=str(tmp_path))
    other_degree = retrieval.ApproximateIndex(vectors, neighbours=12, cache_dir=str(tmp_path))
    assert not other_vectors.loaded and not other_degree.loaded
    assert len(set(os.listdir(tmp_path))) == 3


def test_approximate_index_rebuilds_a_damaged_graph_and_survives_an_unwritable_cache(tmp_path):
    pytest.importorskip("faiss")
    vectors = small_catalogue_vectors()
    first = retrieval.ApproximateIndex(vectors, neighbours=8, cache_dir=str(tmp_path))
    with open(first.graph_file, "wb") as f:
        f.write(b"not a faiss index")
    with pytest.warns(UserWarning, match="could not read the cached graph"):
        again = retrieval.ApproximateIndex(vectors, neighbours=8, cache_dir=str(tmp_path))
    assert not again.loaded
    assert retrieval.ApproximateIndex(vectors, neighbours=8, cache_dir=str(tmp_path)).loaded
    blocked = tmp_path / "a_file"
    blocked.write_text("")  # cache_dir under a file: the folder cannot be made
    with pytest.warns(UserWarning, match="could not save the graph"):
        unsaved = retrieval.ApproximateIndex(vectors, neighbours=8,
                                             cache_dir=str(blocked / "cache"))
    assert len(unsaved) == len(vectors) and not unsaved.loaded
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(first.graph_file),
                                                   "a_file"])


@pytest.mark.parametrize("setting,value", [("neighbours", 0), ("ef_search", -4),
                                           ("ef_construction", 2.5), ("candidates", True)])
def test_approximate_index_refuses_a_bad_setting_before_building(setting, value, tmp_path):
    pytest.importorskip("faiss")
    with pytest.raises(UserInputError, match=f"{setting} must be a positive integer"):
        retrieval.ApproximateIndex(small_catalogue_vectors(), cache_dir=str(tmp_path),
                                   **{setting: value})
    assert not os.listdir(tmp_path)


def test_recommend_approximate_command_saves_the_graph_and_takes_its_settings(
        trained_two_tower_run, tmp_path, capsys):
    """``recommend --approximate --ann_neighbours --ann_ef``: the first call saves the
    graph under the run's item_index/, the second reads it and prints the same items; the
    options without --approximate, or out of range, are refused naming them."""
    pytest.importorskip("faiss")
    from trainer import task

    model_dir = str(shutil.copytree(trained_two_tower_run[0], tmp_path / "run"))
    history = ItemIndex.load(model_dir).item_ids[:2]
    command = ["recommend", "--model_dir", model_dir, "--history", ",".join(history),
               "--k", "4", "--approximate", "--ann_neighbours", "8", "--ann_ef", "64"]
    printed = []
    for _ in range(2):
        assert task.main(command) == 0
        printed.append(capsys.readouterr().out)
    graphs = [name for name in os.listdir(os.path.join(model_dir, "item_index"))
              if name.endswith(".faiss")]
    assert len(graphs) == 1 and graphs[0].startswith("hnsw-M8-efc200-flat-")
    assert printed[0] == printed[1] and len(printed[0].strip().splitlines()) == 5
    assert task.main(command[:-5] + ["--ann_ef", "64"]) == 2
    assert "--approximate only" in capsys.readouterr().err
    assert task.main(command[:-2] + ["--ann_ef", "0"]) == 2
    assert "ef_search must be a positive integer" in capsys.readouterr().err
