use super::*;

fn parse(text: &str) -> ModelConfig {
    ModelConfig::from_pbtxt(text).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    ModelConfig::from_pbtxt(text).unwrap_err().to_string()
}

#[test]
fn triton_text_format_leniencies() {
    let c = parse(
        r#"
        # comment
        name: "m"  # trailing comment
        max_batch_size : 0
        input [ { name: "a", data_type: TYPE_FP32, dims: [ 16, 1, ] }, { name: "b" data_type: 11 dims: 4 dims: 5 }, ]
        output [ { name: "o" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "p"; data_type: TYPE_INT8; dims: [] } ]
        output < name: 'q' data_type: TYPE_BOOL dims: 1 >
        dynamic_batching: { preferred_batch_size: 0x4 max_queue_delay_microseconds: 010 }
        version_policy : { all {} }
        parameters [ { key: "x" value: { string_value: "1" } }, { key: "x" value: { string_value: "2" } } ]
        parameters: {}
        instance_group { kind: KIND_CPU passive: True }
        response_cache { enable: t }
        "#,
    );
    assert_eq!(c.name, "m");
    assert_eq!(c.input.len(), 2);
    assert_eq!(c.input[0].dims, vec![16, 1]);
    assert_eq!(c.input[1].data_type(), DataType::TypeFp32);
    assert_eq!(c.input[1].dims, vec![4, 5]);
    let outs: Vec<&str> = c.output.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, ["o", "p", "q"], "several list blocks concatenate");
    assert!(c.output[1].dims.is_empty());
    let db = c.dynamic_batching().unwrap();
    assert_eq!(db.preferred_batch_size, vec![4]);
    assert_eq!(db.max_queue_delay_microseconds, 8, "leading zero is octal");
    assert!(matches!(
        c.version_policy.unwrap().policy_choice,
        Some(model_version_policy::PolicyChoice::All(_))
    ));
    assert_eq!(
        c.parameters["x"].string_value, "2",
        "a duplicate map key keeps the last value"
    );
    assert!(
        c.parameters.contains_key(""),
        "an empty map entry is the key \"\""
    );
    assert!(c.instance_group[0].passive);
    assert!(c.response_cache.unwrap().enable);
}

#[test]
fn strings_escape_and_concatenate() {
    let c = parse(r#"name: "a\tb" 'c\'d' "\x41\101" "é""#);
    assert_eq!(c.name, "a\tbc'dAAé");
}

#[test]
fn large_unsigned_and_range_checks() {
    let c = parse("dynamic_batching { priority_levels: 18446744073709551615 default_priority_level: 4294967295 }");
    let db = c.dynamic_batching().unwrap();
    assert_eq!(db.priority_levels, u64::MAX);
    assert_eq!(db.default_priority_level, 4294967295);
    assert!(parse_err("max_batch_size: 4294967296").contains("Integer out of range"));
    assert!(parse_err("dynamic_batching { priority_levels: -1 }").contains("Integer out of range"));
    let c = parse("max_batch_size: -3");
    assert_eq!(c.max_batch_size, -3);
}

#[test]
fn errors_carry_line_and_column() {
    let e = parse_err("name: \"m\"\n  bogus: 1\n");
    assert_eq!(e, "failed to read text proto: 2:3: Message type \"inference.ModelConfig\" has no field named \"bogus\".");
    let e = parse_err("input [ { name: \"a\" data_type: TYPE_FOO } ]");
    assert!(
        e.contains("1:32: Unknown enumeration value of \"TYPE_FOO\" for field \"data_type\"."),
        "{e}"
    );
    let e = parse_err("input { dims [16] }");
    assert!(e.contains("1:14: Expected \":\", found \"[\"."), "{e}");
    let e = parse_err("name: \"a\" name: \"b\"");
    assert!(
        e.contains("Non-repeated field \"name\" is specified multiple times."),
        "{e}"
    );
    let e = parse_err("dynamic_batching {} sequence_batching {}");
    assert!(
        e.contains("Field \"sequence_batching\" is specified along with field \"dynamic_batching\", another member of oneof \"scheduling_choice\"."),
        "{e}"
    );
    let e = parse_err("input { name: \"a\" ");
    assert!(e.contains("Expected \"}\""), "{e}");
    let e = parse_err("name: \"unterminated");
    assert!(e.contains("1:7"), "{e}");
}

#[test]
fn proto3_default_then_value_is_not_a_duplicate() {
    let c = parse("max_batch_size: 0 max_batch_size: 8");
    assert_eq!(c.max_batch_size, 8);
    assert!(parse_err("max_batch_size: 8 max_batch_size: 0").contains("specified multiple times"));
}

#[test]
fn hostile_input_is_an_error_not_a_crash() {
    let deep = "optimization { ".repeat(5000);
    // The schema has no recursive message, so nesting ends at an unknown field, at once.
    assert!(parse_err(&deep).contains("has no field named \"optimization\""));
    assert!(parse_err("\u{0}\u{1}\u{2}").contains("Invalid character"));
    assert!(parse_err("name: \"a\" }").contains("Expected identifier"));
    let e = parse_err("input [ { dims: 99999999999999999999999999999 } ]");
    assert!(
        e.contains("Expected integer") || e.contains("out of range"),
        "{e}"
    );
    // An empty config is a valid (empty) config.
    assert_eq!(parse(""), ModelConfig::default());
}

#[test]
fn pbtxt_round_trip() {
    let text = r#"
        name: "rt" platform: "onnxruntime_onnx" max_batch_size: 8
        input [ { name: "in" data_type: TYPE_FP32 dims: [ -1, 3 ] reshape { shape: [ 3, -1 ] } } ]
        output [ { name: "out" data_type: TYPE_STRING dims: [ 1 ] label_filename: "labels.txt" } ]
        dynamic_batching { preferred_batch_size: [ 2, 4 ] priority_levels: 2 default_priority_level: 1
          priority_queue_policy { key: 2 value: { timeout_action: DELAY default_timeout_microseconds: 100 } } }
        instance_group [ { count: 2 kind: KIND_CPU } ]
        parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
        model_warmup [ { name: "w" batch_size: 1 inputs { key: "in" value: { data_type: TYPE_FP32 dims: [ 4, 3 ] zero_data: true } } } ]
    "#;
    let c = parse(text);
    let printed = c.to_pbtxt();
    assert_eq!(parse(&printed), c, "printed:\n{printed}");
    assert!(
        printed.contains("KIND_CPU"),
        "enums print by name:\n{printed}"
    );
}

#[test]
fn normalisation_fills_triton_defaults() {
    let mut c =
        parse("name: \"m\" backend: \"onnxruntime\" max_batch_size: 8 dynamic_batching { }");
    normalize(&mut c);
    assert_eq!(c.dynamic_batching().unwrap().preferred_batch_size, vec![8]);
    assert!(matches!(
        c.version_policy.as_ref().unwrap().policy_choice,
        Some(model_version_policy::PolicyChoice::Latest(
            model_version_policy::Latest { num_versions: 1 }
        ))
    ));
    let opt = c.optimization.as_ref().unwrap();
    assert!(opt.input_pinned_memory.unwrap().enable && opt.output_pinned_memory.unwrap().enable);
    normalize_instance_groups(&mut c, 0);
    assert_eq!(c.instance_group.len(), 1);
    assert_eq!(c.instance_group[0].name, "m");
    assert_eq!(c.instance_group[0].kind(), model_instance_group::Kind::Cpu);
    assert_eq!(c.instance_group[0].count, 2);

    let mut g = parse("name: \"g\" backend: \"identity\" instance_group [ { kind: KIND_AUTO }, { kind: KIND_GPU count: 3 } ]");
    normalize_instance_groups(&mut g, 2);
    assert_eq!(g.instance_group[0].name, "g_0");
    assert_eq!(g.instance_group[0].kind(), model_instance_group::Kind::Gpu);
    assert_eq!(g.instance_group[0].count, 1);
    assert_eq!(g.instance_group[1].gpus, vec![0, 1]);
}

#[test]
fn reshape_segments_between_variable_dims() {
    let ok = parse(
        "name: \"m\" backend: \"identity\" input [ { name: \"i\" data_type: TYPE_FP32 dims: [ 2, 4, -1, 6 ] reshape { shape: [ 8, -1, 1, 6 ] } } ]",
    );
    validate_io_config(&ok).unwrap();
    let huge = parse("name: \"m\" backend: \"identity\" input [ { name: \"i\" data_type: TYPE_FP32 dims: [ 4294967296, 4294967296 ] reshape { shape: [ 1 ] } } ]");
    let e = validate_io_config(&huge).unwrap_err().to_string();
    assert_eq!(
        e,
        "element count for tensor 'i' exceeds maximum size of 9223372036854775807"
    );
}

/// Every protocol name in Triton's table (model_config.md, "Datatypes": the API column) maps
/// to its config type and back; INVALID and unknown names map to nothing.
#[test]
fn protocol_names_round_trip() {
    let triton = [
        ("TYPE_BOOL", "BOOL"),
        ("TYPE_UINT8", "UINT8"),
        ("TYPE_UINT16", "UINT16"),
        ("TYPE_UINT32", "UINT32"),
        ("TYPE_UINT64", "UINT64"),
        ("TYPE_INT8", "INT8"),
        ("TYPE_INT16", "INT16"),
        ("TYPE_INT32", "INT32"),
        ("TYPE_INT64", "INT64"),
        ("TYPE_FP16", "FP16"),
        ("TYPE_FP32", "FP32"),
        ("TYPE_FP64", "FP64"),
        ("TYPE_STRING", "BYTES"),
        ("TYPE_BF16", "BF16"),
    ];
    for (config, api) in triton {
        let d = DataType::from_protocol_name(api).unwrap();
        assert_eq!(d.as_str_name(), config);
        assert_eq!(d.protocol_name(), api);
    }
    let mut known = 0;
    for v in 0..32 {
        if let Ok(d) = DataType::try_from(v) {
            if d != DataType::TypeInvalid {
                assert_eq!(DataType::from_protocol_name(d.protocol_name()), Some(d));
                known += 1;
            }
        }
    }
    assert_eq!(known, triton.len());
    for bad in ["INVALID", "fp32", "STRING", "TYPE_FP32", ""] {
        assert_eq!(DataType::from_protocol_name(bad), None, "{bad}");
    }
}
