"""Tests of demo.py: drawing, inputs and outputs, errors, and runs with a tiny random model."""

import errno
import json
import os

import cv2
import numpy as np
import pytest

import config
import demo
import parsing
from config import JOINT_COLORS, NUM_JOINTS


def tiny_config(**overrides):
    return config.make_config("tiny", **overrides)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny network saved as models/tiny/best.keras + config.json."""
    import model

    run = tmp_path_factory.mktemp("models") / "tiny"
    run.mkdir()
    cfg = tiny_config()
    model.build_model(cfg).save(str(run / "best.keras"))
    config.save_config(cfg, str(run / "config.json"))
    return str(run / "best.keras")


def write_image(path, height=40, width=56):
    rng = np.random.default_rng(len(str(path)))
    assert cv2.imwrite(str(path), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def one_person(size=200):
    """(1, 14, 3) person spread over a size x size image, right ankle missing."""
    person = np.zeros((1, NUM_JOINTS, 3), dtype=np.float32)
    person[0, :, 0] = np.linspace(0.1, 0.8, NUM_JOINTS) * size
    person[0, :, 1] = np.linspace(0.15, 0.85, NUM_JOINTS) * size
    person[0, :, 2] = 0.8
    person[0, 8] = 0
    return person


def test_draw_people_colours_joints_and_leaves_the_input_alone():
    image = np.full((200, 200, 3), 60, dtype=np.uint8)
    person = one_person()
    drawn = demo.draw_people(image, person)
    assert drawn.shape == image.shape and (image == 60).all()
    for joint in (0, 5, 13):
        x, y = np.rint(person[0, joint, :2]).astype(int)
        assert tuple(drawn[y, x]) == JOINT_COLORS[joint]
    assert (drawn[0:3, 0:3] == 60).all()  # the missing joint is not drawn at (0, 0)
    assert (drawn != 60).any(axis=2).sum() > 500  # limbs drawn


def test_drawing_sizes_grow_with_the_image():
    small, large = demo.drawing_sizes((240, 320)), demo.drawing_sizes((2160, 3840))
    assert small[0] >= 2 and large[0] > 2 * small[0] and large[1] > large[0]
    assert large[2] > small[2]


@pytest.mark.parametrize("text, expected", [
    ("left_elbow", ("joint", 4)), ("Left-Elbow", ("joint", 4)), ("background", ("background", 14)),
    ("right_elbow-right_wrist", ("limb", 5)), ("right_wrist:right_elbow", ("limb", 5)),
    ("neck-head_top", ("limb", 0)), ("limb14", ("limb", 14)), ("joint13", ("joint", 13)),
])
def test_parse_map_spec(text, expected):
    assert demo.parse_map_spec(text) == expected


@pytest.mark.parametrize("text", ["elbow", "limb15", "left_elbow-right_wrist"])
def test_parse_map_spec_rejects_unknown_maps_listing_the_choices(text):
    with pytest.raises(demo.DemoError, match="expected a joint .*neck.* or a limb"):
        demo.parse_map_spec(text)


def test_collect_images_skips_outputs_and_other_files(tmp_path):
    for name in ("b.jpg", "a.PNG", "a_pose.PNG", "b_maps_neck.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert demo.collect_images([str(tmp_path)]) == [str(tmp_path / "a.PNG"),
                                                     str(tmp_path / "b.jpg")]
    with pytest.raises(demo.DemoError, match="no such file"):
        demo.collect_images([str(tmp_path / "missing.jpg")])


def test_find_checkpoint_prefers_the_newest_best(tmp_path):
    for run, name, age in (("old", "best.keras", 100), ("new", "best.keras", 10),
                           ("newer", "last.keras", 0)):
        (tmp_path / run).mkdir(exist_ok=True)
        path = tmp_path / run / name
        path.write_bytes(b"x")
        os.utime(path, (1e9 - age, 1e9 - age))
    assert demo.find_checkpoint(str(tmp_path)) == str(tmp_path / "new" / "best.keras")
    with pytest.raises(demo.DemoError, match="python train.py --preset cpu"):
        demo.find_checkpoint(str(tmp_path / "new"))


def test_no_checkpoint_is_a_one_line_error(tmp_path, capsys):
    write_image(tmp_path / "a.jpg")
    status = demo.main(["--models_dir", str(tmp_path / "none"), "--image", str(tmp_path)])
    error = capsys.readouterr().err.strip()
    assert status == 2 and len(error.splitlines()) == 1
    assert "no checkpoint found" in error and "python train.py --preset cpu" in error


def test_only_inference_settings_can_override_the_checkpoint(checkpoint, tmp_path, capsys):
    write_image(tmp_path / "a.jpg")
    status = demo.main(["--model", checkpoint, "--image", str(tmp_path), "--stride", "8"])
    assert status == 2 and "--stride is fixed by the checkpoint" in capsys.readouterr().err
    args = demo.build_parser().parse_args(["--flip", "--scales", "0.5,1", "--peak-threshold",
                                           "0.2"])
    assert demo.explicit_overrides(args) == {"flip_test": True, "scales": (0.5, 1),
                                             "peak_threshold": 0.2}


def test_images_with_json_output_and_a_skipped_file(checkpoint, tmp_path, monkeypatch, capsys):
    write_image(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    person = one_person(size=40)
    monkeypatch.setattr(parsing, "parse_poses",
                        lambda *args, **kwargs: (person.copy(), np.ones(1, np.float32)))
    import utils

    retained = []  # demo keeps freed memory by default (retain_freed_memory)
    monkeypatch.setattr(utils, "retain_freed_memory", lambda: retained.append(True) or True)
    out = tmp_path / "out" / "predictions.json"
    status = demo.main(["--model", checkpoint, "--image", str(tmp_path), "--json", str(out),
                        "--show-maps", "right_elbow-right_wrist", "--flip"])
    captured = capsys.readouterr()
    assert status == 0 and retained == [True]
    assert "skipped:" in captured.err and "broken.jpg" in captured.err
    assert (tmp_path / "good_pose.png").is_file()
    assert (tmp_path / "good_maps_right_elbow-right_wrist.jpg").is_file()
    assert not (tmp_path / "broken_pose.jpg").exists()
    entries = json.loads(out.read_text())
    assert [entry["image_id"] for entry in entries] == ["good"]
    values = entries[0]["keypoint_annotations"]["human1"]
    assert len(values) == 42 and all(type(v) is float for v in values[0::3] + values[1::3])
    assert values[24:27] == [0.0, 0.0, 0]  # the missing right ankle
    assert values[2::3] == [0 if joint == 8 else 1 for joint in range(NUM_JOINTS)]
    # Sub-pixel coordinates, as parsed (one_person(40): x of joint 0 = 0.1 * 40).
    assert values[0:2] == [round(float(person[0, 0, 0]), 2), round(float(person[0, 0, 1]), 2)]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_demo_leaves_glibcs_memory_default_when_told_to(checkpoint, tmp_path, monkeypatch):
    import utils

    write_image(tmp_path / "one.png")
    called = []
    monkeypatch.setattr(utils, "retain_freed_memory", lambda: called.append(True) or True)
    assert demo.main(["--model", checkpoint, "--image", str(tmp_path),
                      "--retain_freed_memory", "false"]) == 0
    assert (tmp_path / "one_pose.png").is_file() and called == []


def test_a_checkpoint_built_for_another_config_is_reported(checkpoint, tmp_path, capsys):
    import shutil

    run = tmp_path / "mismatch"
    run.mkdir()
    shutil.copy(checkpoint, run / "best.keras")
    config.save_config(tiny_config(stage_channels=16), str(run / "config.json"))
    write_image(tmp_path / "a.jpg")
    status = demo.main(["--model", str(run / "best.keras"), "--image", str(tmp_path / "a.jpg")])
    error = capsys.readouterr().err
    assert status == 2 and "cannot be loaded into the network of" in error
    assert len(error.strip().splitlines()) == 1


def test_a_file_that_is_not_a_keras_archive_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_text("not a model")
    config.save_config(tiny_config(), str(run / "config.json"))
    write_image(tmp_path / "a.jpg")
    status = demo.main(["--model", str(run / "best.keras"), "--image", str(tmp_path / "a.jpg")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert error == f"demo.py: error: {run / 'best.keras'}: not a Keras .keras archive " \
                    "(train.py writes those)\n"


@pytest.mark.parametrize("failure", ["under a file", "read-only file system"])
def test_an_unwritable_json_fails_before_any_work(checkpoint, tmp_path, monkeypatch, capsys,
                                                  failure):
    write_image(tmp_path / "a.jpg")
    if failure == "under a file":  # Fails for root too, unlike a folder without write permission.
        (tmp_path / "a_file").write_text("x")
        out, reason = tmp_path / "a_file" / "predictions.json", "is not a folder"
    else:
        out, reason = tmp_path / "out" / "predictions.json", "Read-only file system"

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        monkeypatch.setattr(demo.utils.tempfile, "mkstemp", read_only)

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")
    monkeypatch.setattr(demo, "load_network", no_loading)
    status = demo.main(["--model", checkpoint, "--image", str(tmp_path / "a.jpg"),
                        "--json", str(out)])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert error.startswith(f"demo.py: error: {out}: cannot write this file (") and reason in error
    made = "a_file" if failure == "under a file" else "out"
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", made]  # and no drawing


def test_a_video_that_cannot_be_opened(checkpoint, tmp_path, capsys):
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    status = demo.main(["--model", checkpoint, "--video", str(tmp_path / "clip.mp4")])
    assert status == 2 and "cannot open this video" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]  # nothing half-written


def count_frames(path):
    """The frames OpenCV can read from a video file."""
    capture = cv2.VideoCapture(str(path))
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return frames


def test_a_video_is_annotated_frame_by_frame(checkpoint, tmp_path):
    source = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(source, cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    for index in range(5):
        writer.write(np.full((32, 48, 3), 40 * index, dtype=np.uint8))
    writer.release()
    out = tmp_path / "frames.json"
    assert demo.main(["--model", checkpoint, "--video", source, "--json", str(out),
                      "--max-frames", "4"]) == 0
    assert count_frames(tmp_path / "clip_pose.mp4") == 4
    assert [entry["image_id"] for entry in json.loads(out.read_text())] == [
        f"clip_{index:06d}" for index in range(4)]


def test_a_cut_video_is_annotated_as_far_as_it_goes_with_a_warning(checkpoint, tmp_path, capsys):
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32))
    rng = np.random.default_rng(0)
    for _ in range(6):  # Noise: every frame compresses to about the same size.
        writer.write(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
    writer.release()
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])  # a download cut short
    readable = count_frames(cut)
    assert 0 < readable < 6
    assert demo.main(["--model", checkpoint, "--video", str(cut)]) == 0
    error = capsys.readouterr().err
    assert f"warning: {cut}: only {readable} of the 6 frames the file announces" in error
    assert count_frames(tmp_path / "cut_pose.mp4") == readable
    # The whole video, or the cut one stopped on purpose by --max-frames, gives no warning.
    assert demo.main(["--model", checkpoint, "--video", str(whole)]) == 0
    assert demo.main(["--model", checkpoint, "--video", str(cut), "--max-frames",
                      str(readable)]) == 0
    assert "warning" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Bad input: every probe a user's mistake could make, kept as a test
# --------------------------------------------------------------------------------------------
def skipped_lines(stderr):
    """The "skipped: ..." lines of stderr; splitlines also splits at the progress bar's \\r."""
    return [line for line in stderr.splitlines() if line.startswith("skipped:")]


def video_without_frames(path, kind):
    """A video file without a frame: an empty file, a valid MJPG .avi or mp4v .mp4 container
    that holds no frame, or an .mp4 cut before its index (a download that stopped early)."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "cut":
        whole = path.with_name("whole.mp4")
        writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"mp4v"), 10, (48, 32))
        for index in range(5):
            writer.write(np.full((32, 48, 3), 40 * index, dtype=np.uint8))
        writer.release()
        path.write_bytes(whole.read_bytes()[:200])
        whole.unlink()
    else:
        fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
        cv2.VideoWriter(str(path), fourcc, 10, (48, 32)).release()
        assert path.stat().st_size > 0


@pytest.mark.parametrize("name, kind, message", [
    ("clip.mp4", "empty", "the video file is empty"),
    ("clip.avi", "no frames", "no frame could be read from this video"),
    ("clip.mp4", "no frames", "cannot open this video (missing, unreadable or an unsupported "
                              "format"),
    ("clip.mp4", "cut", "cannot open this video (missing, unreadable or an unsupported "
                        "format: moov atom not found)"),
])
def test_a_video_without_frames_is_one_line_and_writes_nothing(checkpoint, tmp_path, capfd,
                                                               name, kind, message):
    video_without_frames(tmp_path / name, kind)
    capfd.readouterr()
    status = demo.main(["--model", checkpoint, "--video", str(tmp_path / name)])
    # capfd sees file descriptor 2 itself: FFmpeg's own messages and the progress bar too,
    # and neither may stand beside the one line.
    error = capfd.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert error.startswith(f"demo.py: error: {tmp_path / name}: {message}")
    assert sorted(os.listdir(tmp_path)) == [name]  # no video, no tracks, no temporary file


def junk_folder(folder):
    """Good images among text, a fake JPEG, an empty PNG and two subfolders (one named like an
    image). Returns the names of the good images."""
    write_image(folder / "good1.jpg")
    write_image(folder / "good2.png", 48, 40)
    (folder / "notes.txt").write_text("not an image, and not named like one")
    (folder / "README").write_text("x")
    (folder / "fake.jpg").write_text("text with a .jpg name")
    (folder / "zero.png").write_bytes(b"")
    (folder / "photos.jpg").mkdir()
    (folder / "inner").mkdir()
    write_image(folder / "inner" / "deep.jpg")
    return ["good1", "good2"]


def test_a_folder_of_mixed_junk_does_the_good_images_and_names_each_bad_one(checkpoint, tmp_path,
                                                                              capsys):
    good = junk_folder(tmp_path)
    out = tmp_path / "out" / "predictions.json"
    status = demo.main(["--model", checkpoint, "--image", str(tmp_path), "--json", str(out)])
    error = capsys.readouterr().err
    assert status == 0
    assert skipped_lines(error) == [
        f"skipped: {tmp_path / 'fake.jpg'}: not an image: a text file",
        f"skipped: {tmp_path / 'zero.png'}: image file is empty"]
    assert "photos.jpg" not in error and "inner" not in error and "notes" not in error
    assert [entry["image_id"] for entry in json.loads(out.read_text())] == good
    assert (tmp_path / "good1_pose.jpg").is_file() and (tmp_path / "good2_pose.png").is_file()
    assert os.listdir(tmp_path / "inner") == ["deep.jpg"]  # subfolders are not scanned
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")]


def test_a_folder_where_every_image_is_bad_exits_1_and_keeps_the_old_json(checkpoint, tmp_path,
                                                                          capsys):
    (tmp_path / "fake.jpg").write_text("text")
    (tmp_path / "zero.png").write_bytes(b"")
    out = tmp_path / "predictions.json"
    out.write_text("[\"an earlier run's results\"]\n")
    status = demo.main(["--model", checkpoint, "--image", str(tmp_path), "--json", str(out)])
    error = capsys.readouterr().err
    assert status == 1 and len(skipped_lines(error)) == 2
    assert error.splitlines()[-1] == ("demo.py: error: none of the 2 image(s) could be used; "
                                      "nothing written")
    assert out.read_text() == "[\"an earlier run's results\"]\n"
    assert sorted(os.listdir(tmp_path)) == ["fake.jpg", "predictions.json", "zero.png"]


def unusual_images(folder):
    """Constant images of unusual formats, and the RGB pixel each must decode to."""
    cases = {
        "grey.png": (np.full((40, 56), 100, np.uint8), (100, 100, 100)),
        "rgba.png": (np.full((40, 56, 4), (10, 20, 30, 0), np.uint8), (30, 20, 10)),
        "deep.png": (np.full((40, 56, 3), (257 * 10, 257 * 20, 257 * 30), np.uint16),
                     (30, 20, 10)),
        "deep_grey.png": (np.full((40, 56), 257 * 200, np.uint16), (200, 200, 200)),
        "deep_rgba.png": (np.full((40, 56, 4), 65535, np.uint16), (255, 255, 255)),
        "float.tif": (np.full((40, 56, 3), 0.5, np.float32), (128, 128, 128)),
        "signed.tif": (np.full((40, 56), -5, np.int16), (0, 0, 0)),
    }
    for name, (pixels, _) in cases.items():
        assert cv2.imwrite(str(folder / name), pixels), name
    return {name: rgb for name, (_, rgb) in cases.items()}


def test_grey_rgba_16_bit_and_float_images_become_8_bit_rgb(tmp_path):
    for name, rgb in unusual_images(tmp_path).items():
        image = demo.utils.read_image_rgb(str(tmp_path / name))
        assert image.dtype == np.uint8 and image.shape == (40, 56, 3), name
        assert tuple(image[0, 0]) == rgb, name
    with pytest.raises(demo.utils.ImageError, match="x.tif: an image of 2 channels"):
        demo.utils.to_bgr8(np.zeros((4, 5, 2), np.uint8), "x.tif")


def test_grey_rgba_16_bit_and_float_images_give_people_and_drawings(checkpoint, tmp_path,
                                                                    monkeypatch, capsys):
    names = sorted(unusual_images(tmp_path))
    monkeypatch.setattr(parsing, "parse_poses",
                        lambda *args, **kwargs: (one_person(size=40), np.ones(1, np.float32)))
    real_stream, seen = demo.inference.estimate_poses_stream, []

    def checked(network, items, cfg, **kwargs):
        for key, image in items:  # What the network gets: 8-bit 3-channel, whatever the file.
            seen.append((image.dtype, image.shape[2]))
            yield from real_stream(network, [(key, image)], cfg, **kwargs)
    monkeypatch.setattr(demo.inference, "estimate_poses_stream", checked)
    out = tmp_path / "predictions.json"
    assert demo.main(["--model", checkpoint, "--image", str(tmp_path), "--json", str(out)]) == 0
    assert skipped_lines(capsys.readouterr().err) == []
    assert seen == [(np.uint8, 3)] * len(names)
    entries = json.loads(out.read_text())
    assert [entry["image_id"] for entry in entries] == [os.path.splitext(n)[0] for n in names]
    assert all(list(entry["keypoint_annotations"]) == ["human1"] for entry in entries)
    for name in names:
        stem, extension = os.path.splitext(name)
        drawing = cv2.imread(str(tmp_path / f"{stem}_pose{extension}"), cv2.IMREAD_UNCHANGED)
        assert drawing.shape == (40, 56, 3) and drawing.dtype == np.uint8, name


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory):
    """An 8000 x 6000 JPEG (48 megapixels; a plain disc, so it encodes in a fraction of a
    second and takes under 1 MB)."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    image = np.zeros((6000, 8000, 3), np.uint8)
    cv2.circle(image, (4000, 3000), 2000, (200, 100, 50), -1)
    assert cv2.imwrite(str(path), image)
    return path


def test_a_huge_image_is_resized_to_the_inference_height_and_drawn_full_size(
        checkpoint, huge_jpeg, tmp_path):
    from PIL import Image

    out = tmp_path / "predictions.json"
    status = demo.main(["--model", checkpoint, "--image", str(huge_jpeg), "--output",
                        str(tmp_path), "--json", str(out)])
    assert status == 0
    assert [entry["image_id"] for entry in json.loads(out.read_text())] == ["huge"]
    with Image.open(tmp_path / "huge_pose.jpg") as drawing:  # reads the header only
        assert drawing.size == (8000, 6000)


def test_a_huge_image_that_would_fuse_at_full_resolution_is_skipped(checkpoint, huge_jpeg,
                                                                    tmp_path, capsys):
    # --fusion_upsample 0 fuses the maps at the image's resolution: 48 megapixels x 45 maps
    # would take some 24 GiB, so this image is skipped with a reason instead of a crash.
    status = demo.main(["--model", checkpoint, "--image", str(huge_jpeg), "--output",
                        str(tmp_path), "--fusion_upsample", "0"])
    (line,) = skipped_lines(capsys.readouterr().err)
    assert status == 1 and os.listdir(tmp_path) == []
    assert line.startswith(f"skipped: {huge_jpeg}: 8000x6000 pixels would take about ")
    assert line.endswith("GiB of memory to fuse the maps at --fusion_upsample 0; use "
                         "--fusion_upsample 2, or a smaller image")
