"""The datasets' own formats, each written here in its real layout with its real names: read into items and
classes, trained on, their errors naming file and line; and ``timesformer data check`` over one."""

import json

import pytest

from timesformer.cli import main
from timesformer.data.formats import read_format
from timesformer.engine.loop import fit
from timesformer.errors import UserError

from ..engine.helpers import metrics, tiny_run
from .videos import write_video

pytest.importorskip("av")

FRAMES = dict(num_frames=8, sampling="segment", crop_size=16, scale=[16, 16], flip=False)


def video(path, codec="libx264", frames=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, size=32, codec=codec)
    return path


def train_on(tmp_path, **data):
    result = fit(tiny_run(tmp_path, data={**FRAMES, **data}, optim=dict(batch_size=4, epochs=1, log_every=1)))
    return result, metrics(tmp_path / "run")


# --- Something-Something-V2 ---------------------------------------------------------------------------------
@pytest.fixture
def ssv2(tmp_path):
    root = tmp_path / "ssv2"
    labels = {"Pushing something from left to right": "0", "Pushing something from right to left": "1"}
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "labels.json").write_text(json.dumps(labels))
    entries = {"train": [], "validation": []}
    for i in range(12):
        split = "train" if i < 8 else "validation"
        side = ["left to right", "right to left"][i % 2]
        entries[split].append(
            {
                "id": str(78680 + i),
                "label": f"pushing a pen from {side}",
                "template": f"Pushing [something] from {side}",
                "placeholders": ["a pen"],
            }
        )
        video(root / "20bn-something-something-v2" / f"{78680 + i}.webm", codec="libvpx")
    for split, rows in entries.items():
        (root / "labels" / f"{split}.json").write_text(json.dumps(rows))
    return root


def test_ssv2_reads_templates_against_labels_json_and_trains(ssv2, tmp_path):
    videos = ssv2 / "20bn-something-something-v2"
    items, classes = read_format("ssv2", ssv2 / "labels" / "train.json", root=videos)
    assert classes == ["Pushing something from left to right", "Pushing something from right to left"]
    assert items[:2] == [(videos / "78680.webm", 0), (videos / "78681.webm", 1)] and len(items) == 8
    val, _ = read_format("ssv2", ssv2 / "labels", root=videos, split="val")
    assert [p.name for p, _ in val] == ["78688.webm", "78689.webm", "78690.webm", "78691.webm"]
    result, records = train_on(tmp_path, kind="ssv2", train=str(ssv2 / "labels"), root=str(videos))
    assert result["classes"] == classes and result["metrics"]["videos"] == 4
    assert records[-1]["train_loss"] > 0

    rows = json.loads((ssv2 / "labels" / "train.json").read_text())
    rows[3]["template"] = 7
    (ssv2 / "labels" / "train.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"train.json: entry 4 \(id 78683\): template must be text; got 7"):
        read_format("ssv2", ssv2 / "labels" / "train.json", root=videos)
    rows[3]["template"] = "Pulling [something] from left to right"
    (ssv2 / "labels" / "train.json").write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"train.json: entry 4 \(id 78683\): template 'Pulling something from left "):
        read_format("ssv2", ssv2 / "labels" / "train.json", root=videos)


# --- UCF101 -------------------------------------------------------------------------------------------------
UCF_CLASSES = ["ApplyEyeMakeup", "Archery"]


@pytest.fixture
def ucf(tmp_path):
    lists, videos = tmp_path / "ucfTrainTestlist", tmp_path / "UCF-101"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(UCF_CLASSES)))
    for fold in (1, 2):
        train, test = [], []
        for c in UCF_CLASSES:
            for g in (1, 2, 3):
                name = f"{c}/v_{c}_g{g:02d}_c01.avi"
                (test if g == fold else train).append(name)
                video(videos / name, codec="mpeg4")
        (lists / f"trainlist0{fold}.txt").write_text(
            "".join(f"{n} {UCF_CLASSES.index(n.split('/')[0]) + 1}\n" for n in train)
        )
        (lists / f"testlist0{fold}.txt").write_text("".join(f"{n}\n" for n in test))
    return lists, videos


def test_ucf101_reads_class_ind_and_the_chosen_split_and_trains(ucf, tmp_path):
    lists, videos = ucf
    items, classes = read_format("ucf101", lists, root=videos, fold=2)
    assert classes == UCF_CLASSES
    assert items == [
        (videos / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0),
        (videos / "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi", 0),
        (videos / "Archery/v_Archery_g01_c01.avi", 1),
        (videos / "Archery/v_Archery_g03_c01.avi", 1),
    ]
    test, _ = read_format("ucf101", lists, root=videos, split="val", fold=2)
    assert [(p.name, label) for p, label in test] == [("v_ApplyEyeMakeup_g02_c01.avi", 0), ("v_Archery_g02_c01.avi", 1)]
    result, _ = train_on(tmp_path, kind="ucf101", train=str(lists), root=str(videos), split=1)
    assert result["classes"] == UCF_CLASSES and result["metrics"]["videos"] == 2


def test_ucf101_errors_name_the_file_and_line(ucf):
    lists, videos = ucf
    with pytest.raises(UserError, match=r"ucfTrainTestlist: no split 4 \(trainlist04.txt\); the splits there: 1, 2"):
        read_format("ucf101", lists, root=videos, fold=4)
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi 1\nArchery/v_Archery_g02_c01.avi 1\n"
    )
    with pytest.raises(
        UserError, match=r"trainlist01.txt:2: class number 1 does not match the folder 'Archery' \(2 in"
    ):
        read_format("ucf101", lists, root=videos)
    (lists / "trainlist01.txt").write_text("Knitting/v_Knitting_g02_c01.avi 3\n")
    with pytest.raises(UserError, match=r"trainlist01.txt:1: class 'Knitting' is not in classInd.txt"):
        read_format("ucf101", lists, root=videos)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n3 Archery\n")
    with pytest.raises(UserError, match=r"classInd.txt:2: expected '<2> <class name>'; got '3 Archery'"):
        read_format("ucf101", lists, root=videos)
    with pytest.raises(UserError, match=r"nowhere: no such file or folder \(the ucf101 annotations\)"):
        read_format("ucf101", lists.parent / "nowhere")


def test_data_check_counts_each_class_and_names_missing_and_unreadable_files(ucf, tmp_path, capsys):
    lists, videos = ucf
    (videos / "Archery/v_Archery_g03_c01.avi").unlink()
    (videos / "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi").write_text("not a video")
    report = tmp_path / "report.json"
    argv = ["data", "check", "data.kind=ucf101", f"data.train={lists}", f"data.root={videos}", "--json", str(report)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "data.kind=ucf101: 2 classes" in out
    assert "| train | 4 | 1 | 1 | 0.3 - 0.3 |" in out and "| val | 2 | 0 | 0 | 0.3 - 0.3 |" in out
    assert "| ApplyEyeMakeup | 2 | 1 |" in out and "| Archery | 2 | 1 |" in out
    assert f"train: 1 missing file(s) (skipped in training):\n  {videos / 'Archery/v_Archery_g03_c01.avi'}" in out
    assert f"  {videos / 'ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi'}: not a readable video" in out
    saved = json.loads(report.read_text())
    assert saved["splits"]["train"]["per_class"] == {"ApplyEyeMakeup": 2, "Archery": 2}
    assert main(["data", "check", "data.kind=ucf101", f"data.train={lists}", "--split", "7"]) == 2
    assert "no split 7 (trainlist07.txt); the splits there: 1, 2" in capsys.readouterr().err


# --- HMDB51 -------------------------------------------------------------------------------------------------
def test_hmdb51_reads_the_per_class_split_files_and_trains(tmp_path):
    splits, videos = tmp_path / "testTrainMulti_7030_splits", tmp_path / "hmdb51_org"
    splits.mkdir()
    for c in ("brush_hair", "cartwheel"):
        for fold in (1, 2, 3):
            rows = [f"April_09_{c}_u_nm_np1_ba_goo_{k}.avi {(k + fold) % 3}" for k in range(6)]
            (splits / f"{c}_test_split{fold}.txt").write_text("\n".join(rows) + "\n")
        for k in range(6):
            video(videos / c / f"April_09_{c}_u_nm_np1_ba_goo_{k}.avi", codec="mpeg4")
    items, classes = read_format("hmdb51", splits, root=videos, fold=1)
    assert classes == ["brush_hair", "cartwheel"]
    assert [(p.name[-9:], label) for p, label in items] == [("goo_0.avi", 0), ("goo_3.avi", 0)] + [
        ("goo_0.avi", 1),
        ("goo_3.avi", 1),
    ]
    test, _ = read_format("hmdb51", splits, root=videos, split="val", fold=1)
    assert [p.name[-9:] for p, _ in test] == ["goo_1.avi", "goo_4.avi"] * 2  # 2: test; 0 (goo_2, goo_5): unused
    result, _ = train_on(tmp_path, kind="hmdb51", train=str(splits), root=str(videos), split=3)
    assert result["metrics"]["videos"] == 4
    with pytest.raises(UserError, match=r"no split 5 \(<class>_test_split5.txt\); the splits there: 1, 2, 3"):
        read_format("hmdb51", splits, root=videos, fold=5)
    (splits / "cartwheel_test_split1.txt").write_text("a.avi 1\nb.avi 7\n")
    with pytest.raises(UserError, match=r"cartwheel_test_split1.txt:2: expected '<video>.avi 0\|1\|2'"):
        read_format("hmdb51", splits, root=videos, fold=1)


# --- mmaction2 rawframes --------------------------------------------------------------------------------------
def test_rawframes_lists_read_frame_folders_and_train(tmp_path):
    import av

    root = tmp_path / "rawframes"
    lines = []
    for k in range(8):
        folder = root / f"clip_{k}"
        folder.mkdir(parents=True)
        src = video(tmp_path / "src" / f"{k}.mp4")
        with av.open(str(src)) as container:
            for i, frame in enumerate(container.decode(video=0), start=1):
                frame.to_image().save(folder / f"img_{i:05d}.jpg")
                for axis in "xy":  # optical flow beside the RGB frames, as mmaction2 extracts it
                    frame.to_image().convert("L").save(folder / f"flow_{axis}_{i:05d}.jpg")
        lines.append(f"clip_{k} 8 {k % 2}")
    (tmp_path / "train_list_rawframes.txt").write_text("\n".join(lines) + "\n")
    items, classes = read_format("rawframes", tmp_path / "train_list_rawframes.txt", root=root)
    assert classes == ["0", "1"] and items[:2] == [(root / "clip_0", 0), (root / "clip_1", 1)]
    from timesformer.data import open_video

    with open_video(root / "clip_0") as reader:  # the 8 RGB frames, not the 16 flow images beside them
        assert reader.num_frames == 8
    result, _ = train_on(
        tmp_path, kind="rawframes", train=str(tmp_path / "train_list_rawframes.txt"), root=str(root), val=None
    )
    assert result["step"] == 2
    (tmp_path / "names.txt").write_text("left\nright\n")
    (tmp_path / "three.txt").write_text("clip_0 8 0\nclip_1 8 2\nclip_2 8 1\n")
    with pytest.raises(UserError, match=r"three.txt:2: label 2 is past the 2 class names of .*names.txt"):
        read_format("rawframes", tmp_path / "three.txt", root=root, labels=tmp_path / "names.txt")
    (tmp_path / "bad.txt").write_text("clip_0 8 0\nclip_1 eight 1\n")
    with pytest.raises(UserError, match=r"bad.txt:2: expected '<frame folder> <total frames> <label>'"):
        read_format("rawframes", tmp_path / "bad.txt", root=root)


# --- Charades -------------------------------------------------------------------------------------------------
CHARADES_HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length"


def test_charades_csv_is_multi_label_trained_with_bce_and_scored_by_map(tmp_path):
    names = ["Holding some clothes", "Putting clothes somewhere", "Taking some clothes from somewhere"]
    (tmp_path / "Charades_v1_classes.txt").write_text("".join(f"c{i:03d} {n}\n" for i, n in enumerate(names)))
    actions = ["c000 0.00 4.10;c002 2.30 9.00", "c001 1.00 3.00", "", "c002 0.00 5.50;c000 0.40 1.00"]
    for split, count in (("train", 8), ("test", 4)):
        rows = [CHARADES_HEADER]
        for k in range(count):
            vid = f"{split[:2].upper()}{k:03d}"
            rows.append(f'{vid},HR43,Kitchen,6,7,Yes,"A person, then another.",clothes,"Text.",{actions[k % 4]},9.6')
            video(tmp_path / "Charades_v1" / f"{vid}.mp4")
        (tmp_path / f"Charades_v1_{split}.csv").write_text("\n".join(rows) + "\n")
    items, classes = read_format("charades", tmp_path / "Charades_v1_train.csv", root=tmp_path / "Charades_v1")
    assert classes == names
    assert [label for _, label in items[:4]] == [(0, 2), (1,), (), (0, 2)]
    result, records = train_on(
        tmp_path,
        kind="charades",
        train=str(tmp_path / "Charades_v1_train.csv"),
        val=str(tmp_path / "Charades_v1_test.csv"),
        root=str(tmp_path / "Charades_v1"),
    )
    assert "mAP" in result["metrics"] and "top1" not in result["metrics"]
    assert "mAP" in records[-1]
    (tmp_path / "bad.csv").write_text(CHARADES_HEADER + "\nX1,a,b,1,1,Yes,s,o,d,c00 1.0 2.0,3\n")
    with pytest.raises(UserError, match=r"bad.csv:2: action 'c00 1.0 2.0': expected 'c<3 digits> <start s> <end s>'"):
        read_format("charades", tmp_path / "bad.csv")
