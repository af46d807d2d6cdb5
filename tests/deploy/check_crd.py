"""Validates Prometheus Operator resources against prometheus-operator.schema.yaml.

Usage: check_crd.py SCHEMA MANIFEST...  Every YAML document of apiVersion
monitoring.coreos.com/* is checked against the schema of its kind; a kind the schema lacks is
an error. Prints one line per problem and exits 1 if there was any, else prints one line per
resource checked and exits 0. Needs PyYAML and jsonschema (scripts/test.sh installs both).
"""
import sys

import jsonschema
import yaml


def main(schema_path, manifest_paths):
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    problems = 0
    for path in manifest_paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            if not str(doc.get("apiVersion", "")).startswith("monitoring.coreos.com/"):
                continue
            kind = doc.get("kind")
            name = doc.get("metadata", {}).get("name")
            if kind not in schema["kinds"]:
                print(f"{path}: {kind} {name}: no schema for this kind")
                problems += 1
                continue
            kind_schema = dict(schema["kinds"][kind], definitions=schema["definitions"])
            validator = jsonschema.Draft7Validator(kind_schema)
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            for e in errors:
                where = ".".join(str(p) for p in e.absolute_path) or "(root)"
                print(f"{path}: {kind} {name}: {where}: {e.message}")
            problems += len(errors)
            if not errors:
                print(f"{path}: {kind} {name}: valid")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
