//! Unit tests of the module beside it.

#[test]
fn region_names_are_checked_by_form() {
    for ok in [
        "us-east-1",
        "eu-central-2",
        "us-gov-west-1",
        "ap-southeast-5",
        "mx-central-1",
    ] {
        assert!(super::route::valid_region(ok), "{ok}");
    }
    for bad in [
        "",
        "US-EAST-1",
        "us_east_1",
        "useast",
        "us-east-",
        "https://s3.x",
        "1-us",
    ] {
        assert!(!super::route::valid_region(bad), "{bad}");
    }
}

#[test]
fn base64_of_rfc4648_vectors() {
    for (i, o) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(crate::digest::base64(i.as_bytes()), o);
    }
    // MD5("") = d41d8cd98f00b204e9800998ecf8427e.
    assert_eq!(
        crate::digest::base64(&md5::compute(b"").0),
        "1B2M2Y8AsgTpgAmY7PhCfg=="
    );
}
