//! A component that exports an unrelated world.
wit_bindgen::generate!({
    inline: "
        package test:unrelated;
        world unrelated {
            export run: func() -> u32;
        }
    ",
});

struct Unrelated;

impl Guest for Unrelated {
    fn run() -> u32 {
        7
    }
}

export!(Unrelated);
