"""Write the JSON Schema of the Route, Service, Issuer, Descriptor and Secret documents next to this
file.

Run from anywhere with wardgate importable:  python docs/schema/generate.py

The schemas come from the pydantic models in ``wardgate/domain/documents.py``
(``Model.model_json_schema()``). They describe the shape of a document; some rules are
checked only by wardgate itself (durations, RE2 regexes and their size, CIDR blocks, reserved
names, cross-field rules such as "exactly one of backend or backends", an inline JWKS holding
a usable key), so ``wardgate validate -f FILE`` stays the authority. See docs/DOCUMENTS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from wardgate.domain.documents import Descriptor, Issuer, Route, Secret, Service

HERE = Path(__file__).resolve().parent
DIALECT = "https://json-schema.org/draft/2020-12/schema"
Model = type[Route] | type[Service] | type[Issuer] | type[Descriptor] | type[Secret]
MODELS: tuple[tuple[Model, str], ...] = (
    (Route, "route.schema.json"),
    (Service, "service.schema.json"),
    (Issuer, "issuer.schema.json"),
    (Descriptor, "descriptor.schema.json"),
    (Secret, "secret.schema.json"),
)


def schema_of(model: Model, file_name: str) -> dict[str, object]:
    schema = model.model_json_schema()
    return {"$schema": DIALECT, "$id": file_name, **schema}


def main() -> None:
    for model, file_name in MODELS:
        path = HERE / file_name
        path.write_text(json.dumps(schema_of(model, file_name), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
