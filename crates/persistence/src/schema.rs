//! The diesel schema of `migrations/`, written by hand to match it column for column.

diesel::table! {
    /// Registered models.
    models (id) {
        /// Stable identifier.
        id -> Uuid,
        /// Unique name (`COLLATE "C"`).
        name -> Text,
        /// Free text.
        description -> Nullable<Text>,
        /// Labels; GIN-indexed.
        tags -> Array<Text>,
        /// JSON object.
        metadata -> Jsonb,
        /// The creating user; NULL for older models and once the user is deleted.
        owner_id -> Nullable<Uuid>,
        /// The number the next version gets.
        next_version -> Int4,
        /// The highest existing version.
        latest_version -> Nullable<Int4>,
        /// Creation time.
        created_at -> Timestamptz,
        /// Last change.
        updated_at -> Timestamptz,
        /// `private` (owner, admins and grantees) or `public` (every user).
        visibility -> Text,
    }
}

diesel::table! {
    /// Private models granted to users by an admin.
    model_grants (model_id, user_id) {
        /// The model.
        model_id -> Uuid,
        /// The user who may use it.
        user_id -> Uuid,
        /// When it was granted.
        granted_at -> Timestamptz,
    }
}

diesel::table! {
    /// Versions of models.
    model_versions (id) {
        /// Stable identifier.
        id -> Uuid,
        /// The model.
        model_id -> Uuid,
        /// 1, 2, 3… per model.
        version -> Int4,
        /// Where the artifact lives.
        source_uri -> Text,
        /// The first endpoint's URL, kept by a trigger (for the servable index and older builds).
        endpoint_url -> Nullable<Text>,
        /// The first endpoint's credential, sealed, kept by a trigger; never returned by the API.
        upstream_api_key -> Nullable<Text>,
        /// Framework name.
        framework -> Nullable<Text>,
        /// Free text.
        description -> Nullable<Text>,
        /// JSON object.
        metadata -> Jsonb,
        /// Creation time.
        created_at -> Timestamptz,
        /// Last change.
        updated_at -> Timestamptz,
        /// The model server's own name for the model; NULL: the model's name.
        served_model -> Nullable<Text>,
        /// The model servers: `[{"url", "weight", "upstream_api_key"?}]`, credentials sealed.
        endpoints -> Jsonb,
        /// Whether the model servers accept `stream_options.include_usage`.
        supports_stream_usage -> Bool,
    }
}

diesel::table! {
    /// Named pointers to versions; the versions and their weights are in
    /// `model_alias_versions`.
    model_aliases (model_id, alias) {
        /// The model.
        model_id -> Uuid,
        /// The alias name.
        alias -> Text,
        /// The split's primary version (the heaviest), for replicas of builds before splits.
        version_id -> Nullable<Uuid>,
        /// When it was last set.
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    /// The versions an alias splits its calls between, with their weights; the alias is
    /// deleted with its last row (a trigger).
    model_alias_versions (model_id, alias, version_id) {
        /// The model.
        model_id -> Uuid,
        /// The alias name.
        alias -> Text,
        /// One version of the split.
        version_id -> Uuid,
        /// Its weight, 1 to 10,000.
        weight -> Int4,
    }
}

diesel::table! {
    /// Users of the gateway.
    users (id) {
        /// Stable identifier.
        id -> Uuid,
        /// Unique name (`COLLATE "C"`).
        username -> Text,
        /// `admin` or `member`.
        role -> Text,
        /// A disabled user's keys are refused.
        disabled -> Bool,
        /// Creation time.
        created_at -> Timestamptz,
        /// Requests per minute of all the user's keys together; NULL: the default.
        rate_limit_rpm -> Nullable<Int4>,
        /// Tokens per minute of all the user's keys together; NULL: the default.
        tpm -> Nullable<Int8>,
        /// Tokens per calendar month (UTC) of all the user's keys together; NULL: the default.
        monthly_tokens -> Nullable<Int8>,
    }
}

diesel::table! {
    /// API keys: their SHA-256, never the keys themselves.
    api_keys (id) {
        /// Stable identifier.
        id -> Uuid,
        /// The user holding it.
        user_id -> Uuid,
        /// Label.
        name -> Text,
        /// SHA-256 of the key (32 bytes, unique).
        key_hash -> Bytea,
        /// Display prefix.
        prefix -> Text,
        /// Creation time.
        created_at -> Timestamptz,
        /// Refused after this.
        expires_at -> Nullable<Timestamptz>,
        /// First revocation time.
        revoked_at -> Nullable<Timestamptz>,
        /// Approximate last use.
        last_used_at -> Nullable<Timestamptz>,
        /// Own requests-per-minute limit.
        rate_limit_rpm -> Nullable<Int4>,
        /// The models it may be used with (1 to 100 names); NULL: every model.
        models -> Nullable<Array<Text>>,
        /// Own tokens-per-minute limit; NULL: the default.
        tpm -> Nullable<Int8>,
        /// Own tokens-per-month quota; NULL: the default.
        monthly_tokens -> Nullable<Int8>,
    }
}

diesel::table! {
    /// One row per inference call; no foreign keys, so history outlives keys and users.
    usage_events (id) {
        /// Insertion order.
        id -> Int8,
        /// The API key that made the call.
        key_id -> Uuid,
        /// The key's user.
        user_id -> Uuid,
        /// The model called (`COLLATE "C"`).
        model -> Text,
        /// The version that served it, if one was resolved.
        version -> Nullable<Int4>,
        /// The gateway route pattern.
        route -> Text,
        /// HTTP status returned to the client.
        status -> Int4,
        /// Total time in the gateway, in milliseconds.
        latency_ms -> Int4,
        /// Time waiting for the upstream, in milliseconds.
        upstream_ms -> Nullable<Int4>,
        /// Prompt tokens reported by the upstream.
        prompt_tokens -> Nullable<Int8>,
        /// Completion tokens reported by the upstream.
        completion_tokens -> Nullable<Int8>,
        /// When the call was made.
        created_at -> Timestamptz,
        /// What the call was charged against its token quotas, when it reserved tokens.
        quota_tokens -> Nullable<Int8>,
    }
}

diesel::joinable!(model_versions -> models (model_id));
diesel::joinable!(model_alias_versions -> model_versions (version_id));
diesel::joinable!(models -> users (owner_id));
diesel::joinable!(api_keys -> users (user_id));
diesel::joinable!(model_grants -> models (model_id));
diesel::joinable!(model_grants -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    models,
    model_grants,
    model_versions,
    model_aliases,
    model_alias_versions,
    users,
    api_keys,
    usage_events
);
