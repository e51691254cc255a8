"""The typed shapes of the API: every request body and query the server takes, and the answers.

These pydantic models are the one definition of the wire format. The server validates
each request with them (:mod:`validation`, once per request, with the compiled
validators pydantic builds at import) and the OpenAPI document is generated from them
(:mod:`openapi`), so the document states exactly the constraints the server enforces.

Request models are strict (a JSON ``true`` is not an integer, ``"1"`` is not a number)
and forbid unknown fields (``additionalProperties: false``). A rule JSON Schema can state
is stated as a field constraint or in the model's schema; a rule that depends on more than
the request (a part's expected size, the session's digest) or that JSON Schema cannot say
(a manifest's sizes adding up to ``size``) is checked by a model validator or by the
service, and the operation's description says so.

Answer models document the answers; the handlers build plain dicts (no per-request
serialisation through these models) and the tests check answers against the document.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from . import paths
from .config import MAX_PART_COUNT, MAX_PART_SIZE, MIN_PART_SIZE

# --- shared field types ----------------------------------------------------------------

#: A SHA-256 as 64 hex digits (either case; the server keeps lower case).
SHA256_PATTERN: Final = r"^[0-9a-fA-F]{64}$"

# A path segment: not empty, not `.` or `..`, no `/`, `\` or control character; written without
# look-arounds so that every regex engine (pydantic's, JSON Schema's) reads it alike.
_NOT: Final = r"/\\\x00-\x1f\x7f-\x9f"  # never in a segment: `/`, `\`, control characters
_SEGMENT: Final = rf"(?:[^{_NOT}.][^{_NOT}]*|\.[^{_NOT}.][^{_NOT}]*|\.\.[^{_NOT}]+)"
#: A relative POSIX path as ``paths.path_problem`` defines it (a test keeps the two equal).
PATH_PATTERN: Final = rf"^{_SEGMENT}(?:/{_SEGMENT})*$"

#: No NUL character: PostgreSQL's text cannot hold one, so no string the server keeps may.
NO_NUL_PATTERN: Final = r"^[^\x00]*$"
#: Not blank (something other than whitespace), and no NUL.
NOT_BLANK_PATTERN: Final = r"^[^\x00]*[^\s\x00][^\x00]*$"

#: An RFC 3339 timestamp that stays within years 1 to 9999 once moved to UTC, with
#: seconds 00 to 59 (Python's ``datetime`` has neither year 0 nor leap seconds).
TIMESTAMP_PATTERN: Final = (
    r"^(?!0000-|0001-01-01|9999-12-31)[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9]"
    r"(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
)

#: The longest id the server accepts in a body (ids it makes are much shorter).
MAX_ID_LENGTH: Final = 40
MAX_NAME_LENGTH: Final = 200
MAX_TEXT_LENGTH: Final = 10_000
MAX_KEY_LENGTH: Final = 200
MAX_GLOB_LENGTH: Final = 4 * 1024
#: The largest content a session can take: 10,000 parts of the largest part size.
MAX_CONTENT_SIZE: Final = MAX_PART_COUNT * MAX_PART_SIZE
#: ``limit`` of the listings.
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000


def _lower(value: str) -> str:
    return value.lower()


Sha256 = Annotated[
    str, Field(pattern=SHA256_PATTERN, description="a SHA-256 as 64 hex digits"), AfterValidator(_lower)
]
RelPath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=paths.MAX_PATH_LENGTH,
        pattern=PATH_PATTERN,
        description="a relative POSIX path: no leading `/`, no `.`, `..` or empty segments, no backslash or NUL",
    ),
]
#: Any string but one with a NUL.
Str = Annotated[str, Field(pattern=NO_NUL_PATTERN)]
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_NUL_PATTERN)]
Name = Annotated[str, Field(max_length=MAX_NAME_LENGTH, pattern=NOT_BLANK_PATTERN, description="not blank")]
Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH, pattern=NO_NUL_PATTERN)]
Key = Annotated[str, Field(max_length=MAX_KEY_LENGTH, pattern=NO_NUL_PATTERN)]
Alias = Annotated[str, Field(max_length=MAX_NAME_LENGTH, pattern=NO_NUL_PATTERN)]
def _integral(value: object) -> object:
    """JSON Schema's integer: a number with no fraction, ``1.0`` as well as ``1`` (never ``true``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Size = Annotated[int, Field(ge=0, le=MAX_CONTENT_SIZE), BeforeValidator(_integral)]
Role = Literal["owner", "editor", "viewer"]
OwnerType = Literal["project", "collection", "user"]
#: The only values ``analysis_mode`` takes (besides null), as the SDK contract lists them.
AnalysisMode = Literal[
    "non_destructive", "altering", "destructive", "in_situ", "ex_situ", "invasive", "non_invasive"
]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


def field_error(field: str, message: str) -> PydanticCustomError:
    """A rule across fields, reported as the field named (see ``validation.field_error_of``)."""
    return PydanticCustomError("dataerai_field", "{message}", {"field": field, "message": message})


class Body(BaseModel):
    """A JSON request body: strict, and no fields but the declared ones."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Query(BaseModel):
    """Query parameters: strings on the wire, integers where declared; unknown ones are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


# --- request bodies -----------------------------------------------------------------


class NewProject(Body):
    name: Name
    description: Text = ""


class NewMember(Body):
    email: Annotated[str, Field(max_length=320, pattern=NO_NUL_PATTERN)]
    role: Role


class NewCollection(Body):
    project_id: Id
    name: Name
    parent_id: Id | None = Field(default=None, description="default: the project's root collection")


class AssetPatch(Body):
    """Only the fields given change; ``metadata`` replaces the old one."""

    title: Text | None = None
    description: Text | None = None
    alias: Alias | None = None
    tags: list[Str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    path: RelPath = Field(default_factory=str)

    def changes(self) -> dict[str, Any]:
        """The fields the request gave, by their API names."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class NewRelationship(Body):
    model_config = ConfigDict(
        # The timestamp pattern looks ahead, which only Python's engine does.
        regex_engine="python-re",
        json_schema_extra={"description": "`to_asset_id` must not be the source asset itself (400 otherwise)."},
    )

    to_asset_id: Id
    rel_type: Annotated[str, Field(max_length=255, pattern=NOT_BLANK_PATTERN)]
    analysis_mode: AnalysisMode | None = None
    qualifier_note: Text | None = None
    qualifier_time: (
        Annotated[
            Timestamp,
            Field(max_length=100, pattern=TIMESTAMP_PATTERN, description="kept to the microsecond, returned in UTC"),
        ]
        | None
    ) = None
    qualifiers: dict[str, Any] | None = None


class FileEntry(TypedDict):
    """One file of a manifest (a typed dict, not a model: 100,000 of them validate in a tenth of a second)."""

    __pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[misc]
    path: RelPath
    size: Size


class NewUpload(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "description": "`owner_type` and `owner_id` are required unless `asset_id` is given. The sizes "
            "of `files` must add up to `size`, their paths be distinct and no file also be a directory of "
            "another; at most 10,000 parts of `part_size` (checked by the server, 400 with `field`).",
            "anyOf": [
                {"required": ["asset_id"], "properties": {"asset_id": {"type": "string"}}},
                {
                    "required": ["owner_type", "owner_id"],
                    "properties": {"owner_type": {"type": "string"}, "owner_id": {"type": "string"}},
                },
            ],
        }
    )

    owner_type: OwnerType | None = None
    owner_id: Id | None = None
    asset_id: Id | None = Field(default=None, description="set: the upload is a new version of this asset")
    collection_id: Id | None = None
    file_name: RelPath | None = None
    path: RelPath | None = None
    title: Text | None = None
    description: Text | None = None
    alias: Alias | None = None
    tags: list[Str] | None = None
    metadata: dict[str, Any] | None = None
    size: Size
    part_size: Annotated[int, Field(ge=MIN_PART_SIZE, le=MAX_PART_SIZE), BeforeValidator(_integral)]
    sha256: Sha256 | None = None
    idempotency_key: Key | None = None
    files: (
        Annotated[
            list[FileEntry],
            Field(min_length=1, max_length=paths.MAX_FILES, description="the files in stream order"),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _whole(self) -> NewUpload:
        if self.asset_id is None:
            for name in ("owner_type", "owner_id"):
                if getattr(self, name) is None:
                    raise field_error(name, f"`{name}` is required")
        if self.files is not None:
            problem = paths.manifest_problem([entry["path"] for entry in self.files])
            if problem is not None:
                raise field_error("files", f"`files` {problem}")
            listed = sum(entry["size"] for entry in self.files)
            if listed != self.size:
                raise field_error("files", f"`files` sizes add up to {listed} bytes, but `size` is {self.size}")
        return self


class PartTargetRequest(Body):
    model_config = ConfigDict(
        json_schema_extra={
            "description": "Exactly one of `sha256` (the part's own) and `prefix_sha256` (the content's "
            "through the part's end; only where the session's `part_digests` lists it). `size` must be the "
            "part's expected size (400 with `field: size` otherwise).",
            "oneOf": [
                {"required": ["sha256"], "properties": {"sha256": {"type": "string"}}},
                {"required": ["prefix_sha256"], "properties": {"prefix_sha256": {"type": "string"}}},
            ],
        }
    )

    sha256: Sha256 | None = None
    prefix_sha256: Sha256 | None = None
    size: Annotated[int, Field(ge=0, le=MAX_PART_SIZE), BeforeValidator(_integral)]

    @model_validator(mode="after")
    def _one_digest(self) -> PartTargetRequest:
        if (self.sha256 is None) == (self.prefix_sha256 is None):
            raise field_error("sha256", "give the part's `sha256` or its `prefix_sha256` (one of them)")
        return self


_FileDigests = Annotated[
    list[Sha256],
    Field(max_length=paths.MAX_FILES, description="one per file in stream order, stored as reported"),
]


#: An ETag as a store answers it (quoted hex, perhaps with a suffix), in characters.
MAX_ETAG_LENGTH: Final = 256


class SentPart(Body):
    """A part sent straight to the store (a part target's URL), and the ETag it answered."""

    number: Annotated[int, Field(ge=1, le=MAX_PART_COUNT), BeforeValidator(_integral)]
    etag: Annotated[str, Field(min_length=1, max_length=MAX_ETAG_LENGTH, pattern=r"^[\x21-\x7e]+$")]


class Completion(Body):
    idempotency_key: Key | None = None
    sha256: Sha256 | None = Field(default=None, description="required if the session was created without it")
    file_sha256: _FileDigests | None = None
    parts: Annotated[
        list[SentPart],
        Field(max_length=MAX_PART_COUNT,
              description="every part sent straight to the store, with the ETag it answered: the store is "
                          "then not asked which parts it holds (optional; a wrong one costs that question)"),
    ] | None = None

    @model_validator(mode="after")
    def _parts_once(self) -> Completion:
        if self.parts is not None and len({p.number for p in self.parts}) != len(self.parts):
            raise field_error("parts", "each part `number` at most once")
        return self


class DedupRequest(Body):
    sha256: Sha256


class DedupProof(Body):
    digests: list[Sha256] = Field(description="the SHA-256 of each range of the challenge, in order")
    idempotency_key: Key | None = None
    file_sha256: _FileDigests | None = None


# --- query parameters ------------------------------------------------------------------


def _query_int(value: object) -> object:
    """Digits only (``int()`` would also take ``+1``, ``1_0`` and other scripts' digits)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise PydanticCustomError("int_parsing", "must be an integer")
    return value


Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description="page size"), BeforeValidator(_query_int)]
Cursor = Annotated[
    str, Field(min_length=1, pattern=NO_NUL_PATTERN, description="the `next_cursor` of the previous page")
]


class AssetListQuery(Query):
    # Query parameters are listed one by one in the OpenAPI document, where this rule is
    # said in the operation's description; the model's own schema states it.
    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["project_id"]}, {"required": ["collection_id"]}]}
    )

    project_id: Id | None = Field(default=None, description="list this project's assets")
    collection_id: Id | None = Field(default=None, description="list the assets directly in this collection")
    path_prefix: Str | None = Field(default=None, description="only paths starting with this string")
    glob: Annotated[str, Field(max_length=MAX_GLOB_LENGTH, pattern=NO_NUL_PATTERN)] | None = Field(
        default=None, description="only paths matching: `*` within a segment, `**` across, `?`, `[...]`"
    )
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None

    @model_validator(mode="after")
    def _one_scope(self) -> AssetListQuery:
        if (self.project_id is None) == (self.collection_id is None):
            raise field_error("project_id", "`project_id` or `collection_id` is required (exactly one of them)")
        return self


class AssetFilesQuery(Query):
    path: Str | None = Field(default=None, description="exactly this file: answers one FileOfContent")
    prefix: Str | None = Field(default=None, description="list only files whose path starts with this string")
    content_id: Str | None = Field(default=None, description="a content version of this asset (default: the latest)")
    limit: Limit = DEFAULT_LIMIT
    cursor: Cursor | None = None


class DownloadQuery(Query):
    content_id: Str | None = Field(default=None, description="a content version of this asset (default: the latest)")


class _Signed(Query):
    expires: Annotated[int, Field(ge=0, description="Unix seconds"), BeforeValidator(_query_int)]
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="hex HMAC-SHA256")]


class ContentQuery(_Signed):
    pass


class PartQuery(_Signed):
    model_config = ConfigDict(
        json_schema_extra={"description": "exactly one of `sha256` and `prefix_sha256`, as signed"}
    )

    sha256: Sha256 | None = None
    prefix_sha256: Sha256 | None = None
    size: Annotated[int, Field(ge=0, le=MAX_PART_SIZE), BeforeValidator(_query_int)]


# --- answers ---------------------------------------------------------------------------


class Answer(BaseModel):
    """An answer body (documentation only; the handlers build plain dicts)."""

    model_config = ConfigDict(extra="forbid")


class OpenAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(OpenAnswer):
    """The error; more fields say more (`field`, `reason`, `missing_parts`, ...)."""

    code: str = Field(description="a code from the shared catalogue (client/dataerai/protocol.py)")
    message: str
    field: str | None = Field(default=None, description="the request field at fault (`invalid_argument`)")


class Error(Answer):
    error: ErrorDetail


class Health(Answer):
    status: Literal["ok"]
    version: str


class Me(Answer):
    user_id: str
    email: str
    scopes: list[Literal["read", "write"]]
    token_expires_at: Timestamp | None


class Project(Answer):
    project_id: str
    name: str
    description: str
    root_collection_id: str
    allocation_bytes: Annotated[int, Field(ge=0)]
    used_bytes: Annotated[int, Field(ge=0)]
    role: Role
    created_at: Timestamp


class ProjectList(Answer):
    projects: list[Project]


class Member(Answer):
    user_id: str
    email: str
    role: Role
    created_at: Timestamp


class MemberList(Answer):
    members: list[Member]


class Collection(Answer):
    collection_id: str
    project_id: str
    parent_id: str | None
    name: str
    created_at: Timestamp


class CollectionList(Answer):
    collections: list[Collection]


class FileInfo(Answer):
    path: str
    offset: Annotated[int, Field(ge=0)]
    size: Annotated[int, Field(ge=0)]
    sha256: str | None


class FileOfContent(FileInfo):
    content_id: str


class FileList(Answer):
    content_id: str
    files: list[FileOfContent]
    next_cursor: str | None


class ContentInfo(Answer):
    content_id: str
    size: Annotated[int, Field(ge=0)]
    sha256: str
    file_name: str | None
    file_count: Annotated[int, Field(ge=0)]
    files: list[FileInfo] = Field(default_factory=list, description="the manifest; left out in listings")
    created_at: Timestamp


class Asset(Answer):
    asset_id: str
    title: str | None
    description: str | None
    alias: str | None
    path: str
    tags: list[str]
    metadata: dict[str, Any]
    owner_type: OwnerType
    owner_id: str
    project_id: str | None
    collection_id: str | None
    created_by: str
    created_at: Timestamp
    updated_at: Timestamp
    latest_content: ContentInfo | None


class AssetList(Answer):
    assets: list[Asset]
    next_cursor: str | None


class RelatedAsset(Answer):
    id: str
    title: str | None
    owner_type: OwnerType
    owner_id: str


class Relationship(Answer):
    relationship_id: str
    type: str
    from_asset_id: str
    to_asset_id: str
    related_asset: RelatedAsset
    analysis_mode: AnalysisMode | None
    qualifier_note: str | None
    qualifier_time: Timestamp | None
    qualifiers: dict[str, Any] | None
    created_by: str
    created_at: Timestamp
    direction: Literal["outgoing", "incoming"] = Field(default="outgoing", description="in listings only")


class RelationshipList(Answer):
    relationships: list[Relationship]


class Download(Answer):
    content_id: str
    size: Annotated[int, Field(ge=0)]
    sha256: str
    file_name: str | None
    files: list[FileInfo]
    url: str
    headers: dict[str, str]
    expires_at: Timestamp | None


class Part(Answer):
    number: Annotated[int, Field(ge=1)]
    size: Annotated[int, Field(ge=0)]
    sha256: str | None
    prefix_sha256: str | None
    writes: Annotated[int, Field(ge=1)]


class UploadResult(Answer):
    asset_id: str
    content_id: str
    size: Annotated[int, Field(ge=0)]
    sha256: str


class UploadSession(Answer):
    upload_id: str
    state: Literal["open", "completed", "aborted"]
    size: Annotated[int, Field(ge=0)]
    part_size: Annotated[int, Field(ge=0)]
    part_count: Annotated[int, Field(ge=1)]
    sha256: str | None
    file_name: str | None
    path: str | None
    files: list[FileEntry] | None
    parts: list[Part]
    part_digests: list[Literal["sha256", "prefix_sha256"]] = Field(description="which digests a part target takes")
    bytes_received: Annotated[int, Field(ge=0)]
    created_at: Timestamp
    expires_at: Timestamp
    result: UploadResult | None


class PartTarget(Answer):
    method: Literal["PUT"]
    url: str
    headers: dict[str, str]
    expires_at: Timestamp | None


class PartReceipt(Answer):
    """`prefix_sha256` null: the prefix digest could not be checked; `sha256` is then the part's own."""

    number: Annotated[int, Field(ge=1)]
    size: Annotated[int, Field(ge=0)]
    sha256: str | None
    prefix_sha256: str | None


class ByteRange(Answer):
    offset: Annotated[int, Field(ge=0)]
    length: Annotated[int, Field(ge=0)]


class DedupChallenge(Answer):
    challenge_id: str
    ranges: list[ByteRange]
    expires_at: Timestamp


class DedupResult(UploadResult):
    deduplicated: bool


