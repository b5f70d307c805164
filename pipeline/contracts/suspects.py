"""The suspects stage's flags by name, in one place: its weights in params.yaml, its report
(``reports/suspects/``) and the review page."""

SUSPECT_FLAGS = ("label_issue", "confident_mistake", "no_face", "near_duplicates")
